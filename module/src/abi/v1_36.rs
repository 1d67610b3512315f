//! Envoy 1.36's dynamic-module ABI (version string = the sha256 of that release's `abi.h`):
//! the callbacks the filter uses, and the [`Envoy`] view over them.

use super::{Buffer, EnvoyHeader, FilterPtr, METRICS_SUCCESS, ModuleHeader, label_buffers};
use crate::envoy::{DefineStats, Envoy, Scheduler, Side};
use std::ffi::{c_char, c_void};
use std::marker::PhantomData;

/// The ABI version Envoy 1.36.2 requires (exact match), NUL-terminated.
pub(super) const ABI_VERSION: &[u8] =
    b"ca2be3b80954d2a0e22b41d033b18eff9390c30261c8ec9ffe6e6bf971f41c27\0";

/// `envoy_dynamic_module_type_attribute_id_XdsRouteName`.
const ATTRIBUTE_ROUTE_NAME: usize = 61;
/// `envoy_dynamic_module_type_attribute_id_SourceAddress`.
const ATTRIBUTE_SOURCE_ADDRESS: usize = 24;

// SAFETY: these are the C signatures Envoy 1.36.2 exports (../shared/envoy-dynamic-modules.md
// §2b'); the symbols are resolved against the Envoy executable when it loads the module.
#[cfg_attr(test, allow(dead_code))]
unsafe extern "C" {
    fn envoy_dynamic_module_callback_http_get_request_headers_count(f: FilterPtr) -> usize;
    fn envoy_dynamic_module_callback_http_get_request_headers(
        f: FilterPtr,
        out: *mut EnvoyHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_response_headers_count(f: FilterPtr) -> usize;
    fn envoy_dynamic_module_callback_http_get_response_headers(
        f: FilterPtr,
        out: *mut EnvoyHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_request_header(
        f: FilterPtr,
        key: *const c_char,
        key_len: usize,
        out: *mut *const c_char,
        out_len: *mut usize,
        index: usize,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_response_header(
        f: FilterPtr,
        key: *const c_char,
        key_len: usize,
        out: *mut *const c_char,
        out_len: *mut usize,
        index: usize,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_set_request_header(
        f: FilterPtr,
        key: *const c_char,
        key_len: usize,
        value: *const c_char,
        value_len: usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_response_header(
        f: FilterPtr,
        key: *const c_char,
        key_len: usize,
        value: *const c_char,
        value_len: usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_request_body_vector_size(
        f: FilterPtr,
        n: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_request_body_vector(
        f: FilterPtr,
        out: *mut Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_response_body_vector_size(
        f: FilterPtr,
        n: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_response_body_vector(
        f: FilterPtr,
        out: *mut Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_drain_request_body(f: FilterPtr, n: usize) -> bool;
    fn envoy_dynamic_module_callback_http_append_request_body(
        f: FilterPtr,
        data: *const c_char,
        len: usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_drain_response_body(f: FilterPtr, n: usize) -> bool;
    fn envoy_dynamic_module_callback_http_append_response_body(
        f: FilterPtr,
        data: *const c_char,
        len: usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        f: FilterPtr,
        status: u32,
        headers: *const ModuleHeader,
        headers_len: usize,
        body: *const c_char,
        body_len: usize,
    );
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        f: FilterPtr,
        id: usize,
        out: *mut *const c_char,
        out_len: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_log(level: u32, message: *const c_char, len: usize);
    fn envoy_dynamic_module_callback_http_filter_config_define_counter_vec(
        config: *mut c_void,
        name: *const c_char,
        name_len: usize,
        labels: *const Buffer,
        labels_len: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_histogram_vec(
        config: *mut c_void,
        name: *const c_char,
        name_len: usize,
        labels: *const Buffer,
        labels_len: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter_vec(
        f: FilterPtr,
        id: usize,
        labels: *const Buffer,
        labels_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_record_histogram_value_vec(
        f: FilterPtr,
        id: usize,
        labels: *const Buffer,
        labels_len: usize,
        value: u64,
    ) -> u32;
}

/// Envoy's filter configuration while `config_new` runs: where stats are defined.
pub(super) struct Definer(pub(super) *mut c_void);

impl Definer {
    fn define(&self, name: &str, labels: &[&str], histogram: bool) -> Option<usize> {
        let define = if histogram {
            envoy_dynamic_module_callback_http_filter_config_define_histogram_vec
        } else {
            envoy_dynamic_module_callback_http_filter_config_define_counter_vec
        };
        let labels = label_buffers(labels);
        let mut id = 0usize;
        // SAFETY: the configuration Envoy is creating (valid during `config_new`); name and
        // labels outlive the call, which copies them.
        let result = unsafe {
            define(
                self.0,
                name.as_ptr().cast(),
                name.len(),
                labels.as_ptr(),
                labels.len(),
                &raw mut id,
            )
        };
        (result == METRICS_SUCCESS).then_some(id)
    }
}

impl DefineStats for Definer {
    fn counter(&self, name: &str, labels: &[&str]) -> Option<usize> {
        self.define(name, labels, false)
    }

    fn histogram(&self, name: &str, labels: &[&str]) -> Option<usize> {
        self.define(name, labels, true)
    }
}

/// Envoy's stream during one hook; `'hook` keeps it from outliving the call that got it.
pub(super) struct Stream<'hook> {
    ptr: FilterPtr,
    hook: PhantomData<&'hook ()>,
}

impl Stream<'_> {
    /// The stream Envoy named in the hook being run.
    pub(super) fn new(ptr: FilterPtr) -> Self {
        Stream {
            ptr,
            hook: PhantomData,
        }
    }

    fn header_values(&self, side: Side, name: &str) -> Vec<Vec<u8>> {
        let get = match side {
            Side::Request => envoy_dynamic_module_callback_http_get_request_header,
            Side::Response => envoy_dynamic_module_callback_http_get_response_header,
        };
        let mut values = Vec::new();
        let mut index = 0;
        loop {
            let mut out: *const c_char = std::ptr::null();
            let mut len = 0usize;
            // SAFETY: `self.ptr` is the stream of the running hook; `name` outlives the call;
            // `out`/`len` are valid out-parameters; Envoy's view is copied before the next call.
            let count = unsafe {
                get(
                    self.ptr,
                    name.as_ptr().cast(),
                    name.len(),
                    &raw mut out,
                    &raw mut len,
                    index,
                )
            };
            if index >= count || out.is_null() {
                return values;
            }
            // SAFETY: Envoy returned `len` readable bytes at `out`, valid until the map changes.
            values.push(unsafe { std::slice::from_raw_parts(out.cast::<u8>(), len) }.to_vec());
            index += 1;
        }
    }

    /// Envoy's views of the body it holds for `side` (the buffered body, else the part just
    /// received), valid until the hook returns or the body changes.
    fn chunks(&self, side: Side) -> Vec<Buffer> {
        let (size, get) = match side {
            Side::Request => (
                envoy_dynamic_module_callback_http_get_request_body_vector_size
                    as unsafe extern "C" fn(FilterPtr, *mut usize) -> bool,
                envoy_dynamic_module_callback_http_get_request_body_vector
                    as unsafe extern "C" fn(FilterPtr, *mut Buffer) -> bool,
            ),
            Side::Response => (
                envoy_dynamic_module_callback_http_get_response_body_vector_size as _,
                envoy_dynamic_module_callback_http_get_response_body_vector as _,
            ),
        };
        let mut n = 0usize;
        // SAFETY: the stream of the running hook; `n` is a valid out-parameter.
        if !unsafe { size(self.ptr, &raw mut n) } || n == 0 {
            return Vec::new();
        }
        let mut chunks = vec![Buffer::default(); n];
        // SAFETY: `chunks` has room for the `n` slices Envoy fills.
        if !unsafe { get(self.ptr, chunks.as_mut_ptr()) } {
            return Vec::new();
        }
        chunks
    }

    fn set(&self, side: Side, name: &str, value: Option<&[u8]>) {
        let set = match side {
            Side::Request => envoy_dynamic_module_callback_http_set_request_header,
            Side::Response => envoy_dynamic_module_callback_http_set_response_header,
        };
        let (ptr, len) = value.map_or((std::ptr::null(), 0), |v| (v.as_ptr().cast(), v.len()));
        // SAFETY: the stream of the running hook; key and value outlive the call, which copies
        // them; a null value removes the header (the ABI's documented removal).
        unsafe { set(self.ptr, name.as_ptr().cast(), name.len(), ptr, len) };
    }
}

impl Envoy for Stream<'_> {
    fn headers(&self, side: Side) -> Vec<(String, Vec<u8>)> {
        let (count, get) = match side {
            Side::Request => (
                envoy_dynamic_module_callback_http_get_request_headers_count
                    as unsafe extern "C" fn(FilterPtr) -> usize,
                envoy_dynamic_module_callback_http_get_request_headers
                    as unsafe extern "C" fn(FilterPtr, *mut EnvoyHeader) -> bool,
            ),
            Side::Response => (
                envoy_dynamic_module_callback_http_get_response_headers_count as _,
                envoy_dynamic_module_callback_http_get_response_headers as _,
            ),
        };
        // SAFETY: the stream of the running hook.
        let n = unsafe { count(self.ptr) };
        let mut raw = vec![EnvoyHeader::default(); n];
        // SAFETY: `raw` has room for the `n` entries Envoy fills.
        if n == 0 || !unsafe { get(self.ptr, raw.as_mut_ptr()) } {
            return Vec::new();
        }
        raw.into_iter().map(EnvoyHeader::copied).collect()
    }

    fn set_header(&self, side: Side, name: &str, value: &[u8]) {
        self.set(side, name, Some(value));
    }

    fn add_header(&self, side: Side, name: &str, value: &[u8]) {
        // 1.36 has no add: the values present and the new one become one comma-joined value
        // (RFC 9110 list syntax; docs/envoy-module.md says so).
        let mut joined = self.header_values(side, name).join(&b", "[..]);
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(value);
        self.set(side, name, Some(&joined));
    }

    fn remove_header(&self, side: Side, name: &str) {
        self.set(side, name, None);
    }

    fn body(&self, side: Side) -> Vec<u8> {
        let mut body = Vec::new();
        for chunk in self.chunks(side) {
            body.extend_from_slice(chunk.bytes());
        }
        body
    }

    fn body_len(&self, side: Side) -> usize {
        // 1.36 has no size call: the chunks' lengths, without copying them.
        self.chunks(side).iter().map(|c| c.len).sum()
    }

    fn replace_body(&self, side: Side, body: &[u8]) -> bool {
        let len = self.body_len(side);
        let (drain, append) = match side {
            Side::Request => (
                envoy_dynamic_module_callback_http_drain_request_body
                    as unsafe extern "C" fn(FilterPtr, usize) -> bool,
                envoy_dynamic_module_callback_http_append_request_body
                    as unsafe extern "C" fn(FilterPtr, *const c_char, usize) -> bool,
            ),
            Side::Response => (
                envoy_dynamic_module_callback_http_drain_response_body as _,
                envoy_dynamic_module_callback_http_append_response_body as _,
            ),
        };
        // SAFETY: the stream of the running hook; `body` outlives the call, which copies it.
        unsafe {
            (len == 0 || drain(self.ptr, len))
                && (body.is_empty() || append(self.ptr, body.as_ptr().cast(), body.len()))
        }
    }

    fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let headers: Vec<ModuleHeader> = headers.iter().map(ModuleHeader::from).collect();
        // SAFETY: the stream of the running hook; the header array and the body outlive the
        // call, which copies them.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.ptr,
                u32::from(status),
                headers.as_ptr(),
                headers.len(),
                body.as_ptr().cast(),
                body.len(),
            );
        }
    }

    fn route_name(&self) -> Option<String> {
        self.attribute(ATTRIBUTE_ROUTE_NAME)
    }

    fn source_address(&self) -> Option<String> {
        self.attribute(ATTRIBUTE_SOURCE_ADDRESS)
    }

    fn clear_route_cache(&self) {
        super::clear_route_cache(self.ptr);
    }

    fn resume(&self, side: Side) {
        super::resume(self.ptr, side);
    }

    fn scheduler(&self) -> Box<dyn Scheduler> {
        super::scheduler(self.ptr)
    }

    fn increment(&self, id: usize, labels: &[&str], by: u64) {
        self.stat(id, labels, by, false);
    }

    fn record(&self, id: usize, labels: &[&str], value: u64) {
        self.stat(id, labels, value, true);
    }
}

impl Stream<'_> {
    fn stat(&self, id: usize, labels: &[&str], value: u64, histogram: bool) {
        let update = if histogram {
            envoy_dynamic_module_callback_http_filter_record_histogram_value_vec
        } else {
            envoy_dynamic_module_callback_http_filter_increment_counter_vec
        };
        let labels = label_buffers(labels);
        // SAFETY: the stream of the running hook; `id` was defined on its configuration; the
        // label values outlive the call. A refused update is not worth failing a request for.
        unsafe { update(self.ptr, id, labels.as_ptr(), labels.len(), value) };
    }

    fn attribute(&self, id: usize) -> Option<String> {
        let mut out: *const c_char = std::ptr::null();
        let mut len = 0usize;
        // SAFETY: the stream of the running hook; valid out-parameters.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.ptr,
                id,
                &raw mut out,
                &raw mut len,
            )
        };
        if !found || out.is_null() {
            return None;
        }
        // SAFETY: Envoy returned `len` readable bytes at `out`, copied at once.
        let bytes = unsafe { std::slice::from_raw_parts(out.cast::<u8>(), len) };
        Some(String::from_utf8_lossy(bytes).into_owned())
    }
}

/// Writes `line` to Envoy's log (component `dynamic_modules`) at `level`.
pub(super) fn log(level: tracing::Level, line: &str) {
    // SAFETY: Envoy's logger is usable from any thread; `line` outlives the call, which copies it.
    unsafe {
        envoy_dynamic_module_callback_log(envoy_level(level), line.as_ptr().cast(), line.len());
    }
}

/// Envoy's severity for `level` (`envoy_dynamic_module_type_log_level`: trace 0 .. error 4).
fn envoy_level(level: tracing::Level) -> u32 {
    match level {
        tracing::Level::TRACE => 0,
        tracing::Level::DEBUG => 1,
        tracing::Level::INFO => 2,
        tracing::Level::WARN => 3,
        tracing::Level::ERROR => 4,
    }
}

/// The hooks whose shape is 1.36's own.
mod hooks {
    use super::super::{Buffer, EnvoyHeader, FilterPtr, config_new};
    use super::Definer;
    use std::ffi::{c_char, c_void};

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
        config_envoy: *mut c_void,
        _name: *const c_char,
        _name_len: usize,
        config: *const c_char,
        config_len: usize,
    ) -> *const c_void {
        let bytes = if config.is_null() {
            &[][..]
        } else {
            // SAFETY: Envoy passes `config_len` readable bytes, valid during this call.
            unsafe { std::slice::from_raw_parts(config.cast::<u8>(), config_len) }
        };
        config_new(bytes, &Definer(config_envoy))
    }

    /// Callouts are not used; the hook must exist for Envoy to accept the module.
    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
        _envoy: FilterPtr,
        _module: *const c_void,
        _callout_id: u32,
        _result: u32,
        _headers: *const EnvoyHeader,
        _headers_len: usize,
        _body: *const Buffer,
        _body_len: usize,
    ) {
    }
}

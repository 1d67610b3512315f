//! Envoy 1.40's dynamic-module ABI (version `v0.2.0`): the callbacks the filter uses, the
//! [`Envoy`] view over them, and the hooks whose shape is 1.40's own.

use super::{Buffer, EnvoyHeader, FilterPtr, METRICS_SUCCESS, ModuleHeader, label_buffers};
use crate::envoy::{DefineStats, Envoy, Scheduler, Side};
use std::ffi::c_void;
use std::marker::PhantomData;

/// The ABI version Envoy 1.40.0 expects, NUL-terminated.
pub(super) const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// `envoy_dynamic_module_type_attribute_id_XdsRouteName`.
const ATTRIBUTE_ROUTE_NAME: u32 = 61;
/// `envoy_dynamic_module_type_attribute_id_SourceAddress`.
const ATTRIBUTE_SOURCE_ADDRESS: u32 = 24;

/// `envoy_dynamic_module_type_http_header_type` of a side's headers.
fn header_type(side: Side) -> u32 {
    match side {
        Side::Request => 0,
        Side::Response => 2,
    }
}

/// `envoy_dynamic_module_type_http_body_type`: (received, buffered) of a side.
fn body_types(side: Side) -> (u32, u32) {
    match side {
        Side::Request => (0, 1),
        Side::Response => (2, 3),
    }
}

/// Details Envoy records for the module's own answers (`%RESPONSE_CODE_DETAILS%`).
const DETAILS: &str = "policy_engine";

// SAFETY: these are the C signatures Envoy 1.40.0 exports (../shared/envoy-dynamic-modules.md
// §2b', and 1.40's abi.h); `{ptr, len}` buffers go by value, as declared there.
unsafe extern "C" {
    fn envoy_dynamic_module_callback_http_get_headers_size(f: FilterPtr, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        f: FilterPtr,
        kind: u32,
        out: *mut EnvoyHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        f: FilterPtr,
        kind: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        f: FilterPtr,
        kind: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_body_size(f: FilterPtr, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(f: FilterPtr, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        f: FilterPtr,
        kind: u32,
        out: *mut Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_drain_body(f: FilterPtr, kind: u32, n: usize) -> bool;
    fn envoy_dynamic_module_callback_http_append_body(
        f: FilterPtr,
        kind: u32,
        data: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_received_buffered_request_body(f: FilterPtr) -> bool;
    fn envoy_dynamic_module_callback_http_received_buffered_response_body(f: FilterPtr) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        f: FilterPtr,
        status: u32,
        headers: *const ModuleHeader,
        headers_len: usize,
        body: Buffer,
        details: Buffer,
    );
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        f: FilterPtr,
        id: u32,
        out: *mut Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_log(level: u32, message: Buffer);
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: Buffer,
        labels: *const Buffer,
        labels_len: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: *mut c_void,
        name: Buffer,
        labels: *const Buffer,
        labels_len: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        f: FilterPtr,
        id: usize,
        labels: *const Buffer,
        labels_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
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
            envoy_dynamic_module_callback_http_filter_config_define_histogram
        } else {
            envoy_dynamic_module_callback_http_filter_config_define_counter
        };
        let labels = label_buffers(labels);
        let mut id = 0usize;
        // SAFETY: the configuration Envoy is creating (valid during `config_new`); name and
        // labels outlive the call, which copies them.
        let result = unsafe {
            define(
                self.0,
                buffer(name.as_bytes()),
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

/// A module-owned `{ptr, len}` for a call that copies it.
fn buffer(bytes: &[u8]) -> Buffer {
    Buffer {
        ptr: bytes.as_ptr().cast(),
        len: bytes.len(),
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

    /// Whether the body just received is the one buffered before (then it counts once).
    fn received_is_buffered(&self, side: Side) -> bool {
        // SAFETY: the stream of the running hook.
        unsafe {
            match side {
                Side::Request => {
                    envoy_dynamic_module_callback_http_received_buffered_request_body(self.ptr)
                }
                Side::Response => {
                    envoy_dynamic_module_callback_http_received_buffered_response_body(self.ptr)
                }
            }
        }
    }

    /// The body parts of one kind, appended to `out`.
    fn chunks(&self, kind: u32, out: &mut Vec<u8>) {
        // SAFETY: the stream of the running hook.
        let n = unsafe { envoy_dynamic_module_callback_http_get_body_chunks_size(self.ptr, kind) };
        if n == 0 {
            return;
        }
        let mut chunks = vec![Buffer::default(); n];
        // SAFETY: `chunks` has room for the `n` slices Envoy fills.
        if unsafe {
            envoy_dynamic_module_callback_http_get_body_chunks(self.ptr, kind, chunks.as_mut_ptr())
        } {
            for chunk in &chunks {
                out.extend_from_slice(chunk.bytes());
            }
        }
    }

    fn size(&self, kind: u32) -> usize {
        // SAFETY: the stream of the running hook.
        unsafe { envoy_dynamic_module_callback_http_get_body_size(self.ptr, kind) }
    }

    fn stat(&self, id: usize, labels: &[&str], value: u64, histogram: bool) {
        let update = if histogram {
            envoy_dynamic_module_callback_http_filter_record_histogram_value
        } else {
            envoy_dynamic_module_callback_http_filter_increment_counter
        };
        let labels = label_buffers(labels);
        // SAFETY: the stream of the running hook; `id` was defined on its configuration; the
        // label values outlive the call. A refused update is not worth failing a request for.
        unsafe { update(self.ptr, id, labels.as_ptr(), labels.len(), value) };
    }

    fn attribute(&self, id: u32) -> Option<String> {
        let mut out = Buffer::default();
        // SAFETY: the stream of the running hook; a valid out-parameter.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.ptr,
                id,
                &raw mut out,
            )
        };
        found.then(|| String::from_utf8_lossy(out.bytes()).into_owned())
    }
}

impl Envoy for Stream<'_> {
    fn headers(&self, side: Side) -> Vec<(String, Vec<u8>)> {
        let kind = header_type(side);
        // SAFETY: the stream of the running hook.
        let n = unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.ptr, kind) };
        let mut raw = vec![EnvoyHeader::default(); n];
        // SAFETY: `raw` has room for the `n` entries Envoy fills.
        if n == 0
            || !unsafe {
                envoy_dynamic_module_callback_http_get_headers(self.ptr, kind, raw.as_mut_ptr())
            }
        {
            return Vec::new();
        }
        raw.into_iter().map(EnvoyHeader::copied).collect()
    }

    fn set_header(&self, side: Side, name: &str, value: &[u8]) {
        // SAFETY: the stream of the running hook; both buffers outlive the call, which copies.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                header_type(side),
                buffer(name.as_bytes()),
                buffer(value),
            )
        };
    }

    fn add_header(&self, side: Side, name: &str, value: &[u8]) {
        // SAFETY: as in `set_header`.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.ptr,
                header_type(side),
                buffer(name.as_bytes()),
                buffer(value),
            )
        };
    }

    fn remove_header(&self, side: Side, name: &str) {
        // SAFETY: as in `set_header`; a null value removes the header (the ABI's removal).
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                header_type(side),
                buffer(name.as_bytes()),
                Buffer::default(),
            )
        };
    }

    fn body(&self, side: Side) -> Vec<u8> {
        let (received, buffered) = body_types(side);
        let mut body = Vec::new();
        self.chunks(buffered, &mut body);
        if !self.received_is_buffered(side) {
            self.chunks(received, &mut body);
        }
        body
    }

    fn body_len(&self, side: Side) -> usize {
        let (received, buffered) = body_types(side);
        let mut len = self.size(buffered);
        if !self.received_is_buffered(side) {
            len = len.saturating_add(self.size(received));
        }
        len
    }

    fn replace_body(&self, side: Side, body: &[u8]) -> bool {
        let (received, buffered) = body_types(side);
        let separate = !self.received_is_buffered(side) && self.size(received) > 0;
        let drain = |kind: u32| {
            let len = self.size(kind);
            // SAFETY: the stream of the running hook.
            len == 0
                || unsafe { envoy_dynamic_module_callback_http_drain_body(self.ptr, kind, len) }
        };
        let into = if separate { received } else { buffered };
        drain(buffered)
            && (!separate || drain(received))
            // SAFETY: the stream of the running hook; `body` outlives the call, which copies it.
            && (body.is_empty()
                || unsafe {
                    envoy_dynamic_module_callback_http_append_body(self.ptr, into, buffer(body))
                })
    }

    fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let headers: Vec<ModuleHeader> = headers.iter().map(ModuleHeader::from).collect();
        // SAFETY: the stream of the running hook; the header array, body and details outlive
        // the call, which copies them.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.ptr,
                u32::from(status),
                headers.as_ptr(),
                headers.len(),
                buffer(body),
                buffer(DETAILS.as_bytes()),
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

/// Writes `line` to Envoy's log (component `dynamic_modules`) at `level`.
pub(super) fn log(level: tracing::Level, line: &str) {
    // SAFETY: Envoy's logger is usable from any thread; `line` outlives the call, which copies it.
    unsafe {
        envoy_dynamic_module_callback_log(envoy_level(level), buffer(line.as_bytes()));
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

/// The hooks whose shape is 1.40's own; callouts and streams are not used, but Envoy requires
/// the hooks to exist.
mod hooks {
    use super::super::{Buffer, EnvoyHeader, FilterPtr, config_new};
    use super::Definer;
    use std::ffi::c_void;

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
        config_envoy: *mut c_void,
        _name: Buffer,
        config: Buffer,
    ) -> *const c_void {
        config_new(config.bytes(), &Definer(config_envoy))
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
        _envoy: FilterPtr,
        _module: *const c_void,
        _callout_id: u64,
        _result: u32,
        _headers: *const EnvoyHeader,
        _headers_len: usize,
        _body: *const Buffer,
        _body_len: usize,
    ) {
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
        _envoy: FilterPtr,
        _module: *const c_void,
        _stream: u64,
        _headers: *const EnvoyHeader,
        _headers_len: usize,
        _end_of_stream: bool,
    ) {
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
        _envoy: FilterPtr,
        _module: *const c_void,
        _stream: u64,
        _data: *const Buffer,
        _data_len: usize,
        _end_of_stream: bool,
    ) {
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
        _envoy: FilterPtr,
        _module: *const c_void,
        _stream: u64,
        _trailers: *const EnvoyHeader,
        _trailers_len: usize,
    ) {
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
        _envoy: FilterPtr,
        _module: *const c_void,
        _stream: u64,
    ) {
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
        _envoy: FilterPtr,
        _module: *const c_void,
        _stream: u64,
        _reason: u32,
    ) {
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
        _envoy: FilterPtr,
        _module: *const c_void,
    ) {
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
        _envoy: FilterPtr,
        _module: *const c_void,
    ) {
    }
}

//! Envoy's C ABI: the hooks the module exports and the callbacks it calls. The only place in the
//! crate with `unsafe`; each block says why it holds. The version-specific declarations live in
//! one small file per Envoy ABI; the hooks here turn raw pointers into the safe [`Filter`] and
//! [`Host`] and catch every panic (unwinding into Envoy would abort it).
#![allow(
    unsafe_code,
    reason = "the module's ABI declarations: the one place unsafe is allowed"
)]

#[cfg(all(feature = "envoy-1-36", feature = "envoy-1-40"))]
compile_error!("choose one Envoy ABI: the features envoy-1-36 and envoy-1-40 exclude each other");
#[cfg(not(any(feature = "envoy-1-36", feature = "envoy-1-40")))]
compile_error!("choose an Envoy ABI: enable the feature envoy-1-36 or envoy-1-40");

#[cfg(feature = "envoy-1-36")]
mod v1_36;
#[cfg(feature = "envoy-1-36")]
use v1_36 as version;
#[cfg(all(feature = "envoy-1-40", not(feature = "envoy-1-36")))]
mod v1_40;
#[cfg(all(feature = "envoy-1-40", not(feature = "envoy-1-36")))]
use v1_40 as version;

use crate::envoy::{DefineStats, Envoy, Scheduler, Side};
use crate::filter::{Filter, Flow};
use crate::host::Host;
use policy_core::Registry;
use policy_core::rescue::{Failure, rescue};
use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};

/// `envoy_dynamic_module_type_http_filter_envoy_ptr`: Envoy's per-stream filter.
type FilterPtr = *mut c_void;

/// `envoy_dynamic_module_type_envoy_buffer`: bytes Envoy owns.
#[repr(C)]
#[derive(Clone, Copy)]
struct Buffer {
    ptr: *const c_char,
    len: usize,
}

impl Default for Buffer {
    fn default() -> Self {
        Buffer {
            ptr: std::ptr::null(),
            len: 0,
        }
    }
}

impl Buffer {
    /// The bytes, valid while Envoy's view is (copy before changing what it points into).
    fn bytes(&self) -> &[u8] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: Envoy filled this buffer with `len` readable bytes at `ptr`, which stay valid
        // until the hook returns or the underlying map or body changes; callers copy at once.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

/// `envoy_dynamic_module_type_envoy_http_header`: one header Envoy owns.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct EnvoyHeader {
    key: Buffer,
    value: Buffer,
}

impl EnvoyHeader {
    fn copied(self) -> (String, Vec<u8>) {
        (
            String::from_utf8_lossy(self.key.bytes()).into_owned(),
            self.value.bytes().to_vec(),
        )
    }
}

/// `envoy_dynamic_module_type_module_http_header`: one header the module owns (same layout).
#[repr(C)]
struct ModuleHeader {
    key: *const c_char,
    key_len: usize,
    value: *const c_char,
    value_len: usize,
}

/// Label names or values as Envoy's `module_buffer` array (borrowing `labels`).
fn label_buffers(labels: &[&str]) -> Vec<Buffer> {
    labels
        .iter()
        .map(|l| Buffer {
            ptr: l.as_ptr().cast(),
            len: l.len(),
        })
        .collect()
}

/// `envoy_dynamic_module_type_metrics_result_Success`.
const METRICS_SUCCESS: u32 = 0;

impl From<&(&str, &str)> for ModuleHeader {
    fn from((key, value): &(&str, &str)) -> Self {
        ModuleHeader {
            key: key.as_ptr().cast(),
            key_len: key.len(),
            value: value.as_ptr().cast(),
            value_len: value.len(),
        }
    }
}

// SAFETY: callbacks whose C signature is the same in every supported Envoy ABI
// (../shared/envoy-dynamic-modules.md §2b'): resolved against the Envoy executable at load.
unsafe extern "C" {
    fn envoy_dynamic_module_callback_http_clear_route_cache(f: FilterPtr);
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(f: FilterPtr);
    fn envoy_dynamic_module_callback_http_filter_continue_encoding(f: FilterPtr);
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(f: FilterPtr) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(s: *mut c_void, event: u64);
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(s: *mut c_void);
}

/// Makes the router choose the route of the stream `f` again.
fn clear_route_cache(f: FilterPtr) {
    // SAFETY: `f` is the stream of the running hook (callers hold it only during one).
    unsafe { envoy_dynamic_module_callback_http_clear_route_cache(f) };
}

/// Resumes the stream `f`, stopped in a `side` hook.
fn resume(f: FilterPtr, side: Side) {
    // SAFETY: `f` is the stream of the running hook (`on_scheduled`, on its worker thread).
    unsafe {
        match side {
            Side::Request => envoy_dynamic_module_callback_http_filter_continue_decoding(f),
            Side::Response => envoy_dynamic_module_callback_http_filter_continue_encoding(f),
        }
    }
}

/// A scheduler for the stream `f`.
fn scheduler(f: FilterPtr) -> Box<dyn Scheduler> {
    // SAFETY: called on the stream's worker thread, inside a hook, as the ABI requires.
    let ptr = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(f) };
    Box::new(EnvoyScheduler(ptr))
}

/// Envoy's scheduler of one stream.
struct EnvoyScheduler(*mut c_void);

// SAFETY: Envoy documents `scheduler_commit` and `scheduler_delete` as callable from any thread
// (the event is posted to the stream's dispatcher through a weak reference); the pointer is
// used by one owner at a time, never concurrently.
unsafe impl Send for EnvoyScheduler {}

impl Scheduler for EnvoyScheduler {
    fn commit(&self, event: u64) {
        // SAFETY: a scheduler Envoy made, not yet deleted (deleted only in `drop`).
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_commit(self.0, event) };
    }
}

impl Drop for EnvoyScheduler {
    fn drop(&mut self) {
        // SAFETY: deleted once, after the last commit of its only owner.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(self.0) };
    }
}

// The cdylib's registry, defined by `export_module!`.
// SAFETY: `export_module!` defines this symbol with exactly this signature in the cdylib that
// links this crate; without it the module does not link.
unsafe extern "Rust" {
    fn __policy_module_registry() -> Registry;
    fn __policy_module_build_info() -> &'static str;
}

/// The cdylib's build information (the builder's `build-info.json`, compacted), if it has one.
fn module_build_info() -> Option<String> {
    // SAFETY: a Rust function of this crate's Rust version (see the declaration).
    let text = unsafe { __policy_module_build_info() };
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    Some(value.to_string())
}

fn registry() -> Option<&'static Arc<Registry>> {
    static REGISTRY: OnceLock<Option<Arc<Registry>>> = OnceLock::new();
    REGISTRY
        .get_or_init(|| {
            // SAFETY: a Rust function of this crate's Rust version (see the declaration).
            let built = catch_unwind(|| unsafe { __policy_module_registry() });
            built.ok().map(Arc::new)
        })
        .as_ref()
}

std::thread_local! {
    /// Whether this thread is inside a call from Envoy (a hook): only then may it call Envoy.
    static IN_ENVOY_CALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the current thread as inside a call from Envoy until dropped.
struct EnvoyCall(bool);

impl EnvoyCall {
    fn enter() -> EnvoyCall {
        EnvoyCall(IN_ENVOY_CALL.replace(true))
    }
}

impl Drop for EnvoyCall {
    fn drop(&mut self) {
        IN_ENVOY_CALL.set(self.0);
    }
}

/// The module's log sink: Envoy's logger from inside a hook; from the module's own threads (its
/// runtime, the reload thread), which must not call Envoy, standard error.
fn log(level: tracing::Level, line: &str) {
    if IN_ENVOY_CALL.get() {
        version::log(level, line);
    } else {
        eprintln!("[policy-module][{level}] {line}");
    }
}

/// Runs a hook body; a panic is logged and answered with `fallback`.
fn guard<T>(hook: &'static str, fallback: impl FnOnce() -> T, body: impl FnOnce() -> T) -> T {
    let _call = EnvoyCall::enter();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(_) => {
            tracing::error!(hook, "the policy module panicked: failing closed");
            fallback()
        }
    }
}

/// The answer when the module itself failed on a request or response: 500 with an error id.
fn refuse(stream: &version::Stream<'_>) -> u32 {
    let response = rescue(Failure::Internal("the policy module failed"), "", "");
    let headers: Vec<(&str, &str)> = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // A panic here too would unwind into Envoy: nothing more can be done than not to.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        stream.send_response(response.status(), &headers, response.body());
    }));
    STOP_ITERATION
}

/// `Continue` of every status enum.
const CONTINUE: u32 = 0;
/// `StopIteration` (headers, trailers); `StopIterationAndBuffer` (body).
const STOP_ITERATION: u32 = 1;
/// `StopIterationNoBuffer` (body).
const STOP_NO_BUFFER: u32 = 3;

fn headers_status(flow: Flow) -> u32 {
    match flow {
        Flow::Continue => CONTINUE,
        Flow::Hold | Flow::Stop => STOP_ITERATION,
    }
}

fn body_status(flow: Flow) -> u32 {
    match flow {
        Flow::Continue => CONTINUE,
        Flow::Hold => STOP_ITERATION,
        Flow::Stop => STOP_NO_BUFFER,
    }
}

/// Builds a filter configuration from Envoy's `filter_config` bytes, defining its stats through
/// `stats` (null: refused).
fn config_new(bytes: &[u8], stats: &dyn DefineStats) -> *const c_void {
    guard("http_filter_config_new", std::ptr::null, || {
        let Some(registry) = registry() else {
            return std::ptr::null();
        };
        let Ok(text) = std::str::from_utf8(bytes) else {
            tracing::error!("the module's filter_config is not UTF-8: configuration refused");
            return std::ptr::null();
        };
        match Host::new(Arc::clone(registry), text, stats) {
            Ok(host) => Arc::into_raw(host).cast(),
            Err(error) => {
                tracing::error!(%error, "configuration refused: Envoy keeps the filter it had");
                std::ptr::null()
            }
        }
    })
}

/// The filter behind Envoy's module pointer.
///
/// # Safety
/// `module` must be a pointer `on_http_filter_new` returned and `on_http_filter_destroy` has not
/// yet freed; Envoy guarantees both for every stream hook.
unsafe fn filter<'a>(module: *const c_void) -> &'a Filter {
    // SAFETY: see the function's contract.
    unsafe { &*module.cast::<Filter>() }
}

mod hooks {
    use super::*;

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
        guard("program_init", std::ptr::null, || {
            crate::logging::init(log);
            let Some(registry) = registry() else {
                tracing::error!("the policy module's registry could not be built: not loading");
                return std::ptr::null();
            };
            let policies: Vec<String> = registry
                .iter()
                .map(|p| format!("{}:{}", p.definition().name, p.definition().version))
                .collect();
            let built = module_build_info().unwrap_or_default();
            tracing::info!(host = crate::build_info(), build_info = %built, policies = %policies.join(", "), "policy module loaded");
            version::ABI_VERSION.as_ptr().cast()
        })
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
        guard(
            "http_filter_config_destroy",
            || (),
            || {
                // SAFETY: `config` is the pointer `config_new` returned from `Arc::into_raw`;
                // Envoy destroys it once.
                drop(unsafe { Arc::from_raw(config.cast::<Host>()) });
            },
        );
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
        config: *const c_void,
        _envoy: FilterPtr,
    ) -> *const c_void {
        guard("http_filter_new", std::ptr::null, || {
            let host = {
                // SAFETY: `config` came from `Arc::into_raw` in `config_new` and lives until
                // `config_destroy`; the count is raised before a second Arc is made of it.
                unsafe {
                    Arc::increment_strong_count(config.cast::<Host>());
                    Arc::from_raw(config.cast::<Host>())
                }
            };
            Box::into_raw(Box::new(Filter::new(host)))
                .cast_const()
                .cast()
        })
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: *const c_void) {
        guard(
            "http_filter_destroy",
            || (),
            || {
                // SAFETY: `module` came from `Box::into_raw` in `filter_new`; Envoy destroys it
                // once, after the stream's last hook.
                drop(unsafe { Box::from_raw(module.cast::<Filter>().cast_mut()) });
            },
        );
    }

    /// Runs a request or response hook of the stream `envoy`, whose filter is `module`.
    fn on_stream(
        hook: &'static str,
        envoy: FilterPtr,
        module: *const c_void,
        body: impl FnOnce(&Filter, &version::Stream<'_>) -> u32,
    ) -> u32 {
        let stream = version::Stream::new(envoy);
        guard(
            hook,
            || refuse(&stream),
            || {
                // SAFETY: Envoy passes the pointer of this stream's filter.
                let filter = unsafe { filter(module) };
                body(filter, &stream)
            },
        )
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
        envoy: FilterPtr,
        module: *const c_void,
        end_of_stream: bool,
    ) -> u32 {
        on_stream("request_headers", envoy, module, |filter, stream| {
            headers_status(filter.on_request_headers(stream, end_of_stream))
        })
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
        envoy: FilterPtr,
        module: *const c_void,
        end_of_stream: bool,
    ) -> u32 {
        on_stream("request_body", envoy, module, |filter, stream| {
            body_status(filter.on_request_body(stream, end_of_stream))
        })
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
        envoy: FilterPtr,
        module: *const c_void,
    ) -> u32 {
        on_stream("request_trailers", envoy, module, |filter, stream| {
            headers_status(filter.on_request_trailers(stream))
        })
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
        envoy: FilterPtr,
        module: *const c_void,
        end_of_stream: bool,
    ) -> u32 {
        on_stream("response_headers", envoy, module, |filter, stream| {
            headers_status(filter.on_response_headers(stream, end_of_stream))
        })
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
        envoy: FilterPtr,
        module: *const c_void,
        end_of_stream: bool,
    ) -> u32 {
        on_stream("response_body", envoy, module, |filter, stream| {
            body_status(filter.on_response_body(stream, end_of_stream))
        })
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
        envoy: FilterPtr,
        module: *const c_void,
    ) -> u32 {
        on_stream("response_trailers", envoy, module, |filter, stream| {
            headers_status(filter.on_response_trailers(stream))
        })
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
        _envoy: FilterPtr,
        module: *const c_void,
    ) {
        guard(
            "stream_complete",
            || (),
            || {
                // SAFETY: Envoy passes the pointer of this stream's filter.
                unsafe { filter(module) }.on_stream_complete();
            },
        );
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
        envoy: FilterPtr,
        module: *const c_void,
        _event: u64,
    ) {
        let stream = version::Stream::new(envoy);
        guard(
            "scheduled",
            || {
                refuse(&stream);
            },
            || {
                // SAFETY: Envoy passes the pointer of this stream's filter.
                unsafe { filter(module) }.on_scheduled(&stream);
            },
        );
    }
}

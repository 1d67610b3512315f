//! What the filter asks of Envoy's stream, in safe terms. The ABI shim implements it for the
//! stream a hook was called for (valid only during that hook); tests implement it with a fake.

/// Which side of the exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The request: headers Envoy decodes, the body it sends upstream.
    Request,
    /// The response: headers and body Envoy sends to the client.
    Response,
}

/// One stream, during one hook.
pub trait Envoy {
    /// Every header of `side`, pseudo-headers included, in Envoy's order (copied).
    fn headers(&self, side: Side) -> Vec<(String, Vec<u8>)>;
    /// Replaces every value of `name` with `value`.
    fn set_header(&self, side: Side, name: &str, value: &[u8]);
    /// Adds `value` after the values of `name` present.
    fn add_header(&self, side: Side, name: &str, value: &[u8]);
    /// Removes every value of `name`.
    fn remove_header(&self, side: Side, name: &str);
    /// The body Envoy holds for `side` (copied); at the end of the stream, the whole body.
    fn body(&self, side: Side) -> Vec<u8>;
    /// How many body bytes Envoy holds for `side`.
    fn body_len(&self, side: Side) -> usize;
    /// Replaces the body Envoy holds for `side`; false when Envoy could not (then the message
    /// must not go on).
    fn replace_body(&self, side: Side, body: &[u8]) -> bool;
    /// Answers the client; the caller then stops the stream's iteration.
    fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &[u8]);
    /// Envoy's `xds.route_name` attribute.
    fn route_name(&self) -> Option<String>;
    /// Envoy's `source.address` attribute (`ip:port`, or the bare IP on older Envoys).
    fn source_address(&self) -> Option<String>;
    /// Makes the router choose the route again (after `:path` or `:method` changed).
    fn clear_route_cache(&self);
    /// Resumes a stream stopped in a `side` hook (only from `on_scheduled`).
    fn resume(&self, side: Side);
    /// A way to wake this stream from another thread.
    fn scheduler(&self) -> Box<dyn Scheduler>;
    /// Adds `by` to Envoy counter `id` (from [`DefineStats::counter`]) for `labels`' values.
    fn increment(&self, id: usize, labels: &[&str], by: u64);
    /// Records `value` in Envoy histogram `id` (from [`DefineStats::histogram`]).
    fn record(&self, id: usize, labels: &[&str], value: u64);
}

/// Envoy's stats of one filter configuration, defined while Envoy creates it (Envoy allows no
/// new stats afterwards). `None`: Envoy refused the stat; it is then not recorded.
pub trait DefineStats {
    /// A counter with these label names.
    fn counter(&self, name: &str, labels: &[&str]) -> Option<usize>;
    /// A histogram with these label names.
    fn histogram(&self, name: &str, labels: &[&str]) -> Option<usize>;
}

/// No Envoy stats (tests, or a host without them).
#[derive(Debug)]
pub struct NoStats;

impl DefineStats for NoStats {
    fn counter(&self, _: &str, _: &[&str]) -> Option<usize> {
        None
    }
    fn histogram(&self, _: &str, _: &[&str]) -> Option<usize> {
        None
    }
}

/// Wakes one stream from any thread: Envoy then calls `on_scheduled` on the stream's worker
/// (or drops the event when the stream is gone). Dropping it releases Envoy's scheduler.
pub trait Scheduler: Send {
    /// Posts `event` to the stream's worker thread.
    fn commit(&self, event: u64);
}

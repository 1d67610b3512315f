//! The Prometheus text format (version 0.0.4) of every series.

use super::*;

impl Metrics {
    /// Everything in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut routes: Vec<(String, Arc<RouteMetrics>)> = lock(&self.routes)
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        routes.sort_by(|a, b| a.0.cmp(&b.0));

        header(
            &mut out,
            "policy_engine_requests_total",
            "counter",
            "Chain phases by route and outcome (phase=\"request\" counts every request once).",
        );
        for (route, m) in &routes {
            let route = escape(route);
            for (phase, n) in [
                (Phase::Request, &m.request_continue),
                (Phase::Response, &m.response_continue),
            ] {
                let n = n.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "policy_engine_requests_total{{route=\"{route}\",phase=\"{}\",outcome=\"continue\",status=\"\"}} {n}",
                        phase.as_str()
                    );
                }
            }
            for (phase, outcome, status, n) in m.answered.read().into_iter().map(|(key, n)| {
                let (phase, outcome, status) = answer_parts(key);
                (phase, outcome, status, n)
            }) {
                let _ = writeln!(
                    out,
                    "policy_engine_requests_total{{route=\"{route}\",phase=\"{}\",outcome=\"{}\",status=\"{status}\"}} {n}",
                    phase.as_str(),
                    outcome.label()
                );
            }
        }
        header(
            &mut out,
            "policy_engine_refusals_total",
            "counter",
            "Requests the engine refused (or streams that ended too early), by route and reason.",
        );
        for (route, m) in &routes {
            let route = escape(route);
            for reason in Refusal::ALL {
                let n = m.refusals(reason);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "policy_engine_refusals_total{{route=\"{route}\",reason=\"{}\"}} {n}",
                        reason.label()
                    );
                }
            }
        }
        header(
            &mut out,
            "policy_engine_condition_errors_total",
            "counter",
            "Conditions that could not be evaluated, by route and policy.",
        );
        for (route, m) in &routes {
            let route = escape(route);
            for (policy, n) in lock(&m.condition_errors).iter() {
                let n = n.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "policy_engine_condition_errors_total{{route=\"{route}\",policy=\"{}\"}} {n}",
                        escape(policy)
                    );
                }
            }
        }
        header(
            &mut out,
            "policy_engine_chain_duration_seconds",
            "histogram",
            "Time to run a route's chain, by phase.",
        );
        for (route, m) in &routes {
            for phase in [Phase::Request, Phase::Response] {
                let h = m.duration(phase);
                if h.count() > 0 {
                    let labels =
                        format!("route=\"{}\",phase=\"{}\"", escape(route), phase.as_str());
                    h.render(&mut out, "policy_engine_chain_duration_seconds", &labels);
                }
            }
        }
        let policies: Vec<(String, Arc<PolicyMetrics>)> = lock(&self.policies)
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        for (name, kind, help, read) in [
            (
                "policy_engine_policy_executions_total",
                "counter",
                "Policy runs by name:version.",
                (|p: &PolicyMetrics| p.executions.load(Relaxed)) as fn(&PolicyMetrics) -> u64,
            ),
            (
                "policy_engine_policy_failures_total",
                "counter",
                "Policy runs that failed (error or timeout), whatever their onFailure.",
                |p| p.failures.load(Relaxed),
            ),
            (
                "policy_engine_policy_panics_total",
                "counter",
                "Policy runs that panicked (each is also a failure, handled by onFailure).",
                |p| p.panics.load(Relaxed),
            ),
            (
                "policy_engine_policy_skipped_total",
                "counter",
                "Policy runs skipped because their condition was false or failed.",
                |p| p.skipped.load(Relaxed),
            ),
        ] {
            header(&mut out, name, kind, help);
            for (key, p) in &policies {
                let _ = writeln!(out, "{name}{{policy=\"{}\"}} {}", escape(key), read(p));
            }
        }
        header(
            &mut out,
            "policy_engine_policy_duration_seconds",
            "histogram",
            "Time one policy took, by name:version.",
        );
        for (key, p) in &policies {
            p.duration.render(
                &mut out,
                "policy_engine_policy_duration_seconds",
                &format!("policy=\"{}\"", escape(key)),
            );
        }
        header(
            &mut out,
            "policy_engine_config_reloads_total",
            "counter",
            "Configuration loads by source (file, xds) and result (applied, rejected).",
        );
        for ((source, result), n) in lock(&self.reloads).iter() {
            let _ = writeln!(
                out,
                "policy_engine_config_reloads_total{{source=\"{source}\",result=\"{result}\"}} {n}"
            );
        }
        header(
            &mut out,
            "policy_engine_config_info",
            "gauge",
            "The active configuration: 1 with its source and version.",
        );
        header(
            &mut out,
            "policy_engine_config_loaded_timestamp_seconds",
            "gauge",
            "When the active configuration was loaded (Unix time).",
        );
        if let Some(info) = lock(&self.config).as_ref() {
            let labels = format!(
                "source=\"{}\",version=\"{}\"",
                info.source,
                escape(&info.version)
            );
            let _ = writeln!(out, "policy_engine_config_info{{{labels}}} 1");
            let at = info
                .loaded_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            let _ = writeln!(out, "policy_engine_config_loaded_timestamp_seconds {at}");
        }
        header(
            &mut out,
            "policy_engine_streams_in_flight",
            "gauge",
            "ext_proc streams open now.",
        );
        let _ = writeln!(
            out,
            "policy_engine_streams_in_flight {}",
            self.streams_in_flight()
        );
        header(
            &mut out,
            "policy_engine_buffered_body_bytes",
            "gauge",
            "Body bytes streams hold now while their chains wait for a whole body.",
        );
        let _ = writeln!(
            out,
            "policy_engine_buffered_body_bytes {}",
            self.body_bytes()
        );
        header(
            &mut out,
            "policy_engine_policy_counter_total",
            "counter",
            "Counters policies keep (policy_sdk::Counter), by name.",
        );
        for counter in policy_sdk::counters() {
            let _ = writeln!(
                out,
                "policy_engine_policy_counter_total{{name=\"{}\"}} {}",
                counter.name, counter.value
            );
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

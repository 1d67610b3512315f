//! `security-headers` 1.0.0: security response headers with safe defaults.
//!
//! ```yaml
//! - name: security-headers
//!   version: 1.0.0
//!   params: {contentSecurityPolicy: "default-src 'self'", removeServerHeaders: true}
//! ```

use policy_sdk::{
    Outcome, Policy, PolicyError, ResponseAction, ResponseContext, ResponsePolicy,
    UpstreamResponseMods,
};
use serde::Deserialize;

/// Route parameters; every field has a safe default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// `X-Content-Type-Options: nosniff`.
    #[serde(default = "yes")]
    pub content_type_options: bool,
    /// `X-Frame-Options`, or `off`.
    #[serde(default = "deny")]
    pub frame_options: String,
    /// `Strict-Transport-Security`, or `false`.
    #[serde(default)]
    pub hsts: Option<Hsts>,
    /// `Referrer-Policy`, or `off`.
    #[serde(default = "strict_origin")]
    pub referrer_policy: String,
    /// `Content-Security-Policy`.
    #[serde(default)]
    pub content_security_policy: Option<String>,
    /// `Permissions-Policy`.
    #[serde(default)]
    pub permissions_policy: Option<String>,
    /// Replace upstream values.
    #[serde(default)]
    pub r#override: bool,
    /// Remove `Server` and `X-Powered-By`.
    #[serde(default)]
    pub remove_server_headers: bool,
}

/// HSTS settings, or `false` to leave the header out.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Hsts {
    /// `false`.
    Off(bool),
    /// The header's settings.
    On(HstsSettings),
}

/// `Strict-Transport-Security` settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HstsSettings {
    /// `max-age`.
    #[serde(default = "one_year")]
    pub max_age: u64,
    /// `includeSubDomains`.
    #[serde(default = "yes")]
    pub include_sub_domains: bool,
    /// `preload`.
    #[serde(default)]
    pub preload: bool,
}

fn yes() -> bool {
    true
}
fn deny() -> String {
    "DENY".into()
}
fn strict_origin() -> String {
    "strict-origin-when-cross-origin".into()
}
fn one_year() -> u64 {
    31_536_000
}

/// The policy: the headers to add, computed once.
#[derive(Debug)]
pub struct SecurityHeaders {
    headers: Vec<(&'static str, String)>,
    replace: bool,
    remove_server_headers: bool,
}

impl Policy for SecurityHeaders {
    type Params = Params;
    /// No state of its own: routes with equal parameters share one instance.
    const SHARED_ACROSS_ROUTES: bool = true;

    fn new(p: Params) -> Result<Self, PolicyError> {
        let mut headers = Vec::new();
        if p.content_type_options {
            headers.push(("x-content-type-options", "nosniff".to_owned()));
        }
        if p.frame_options != "off" {
            headers.push(("x-frame-options", p.frame_options));
        }
        let hsts = match p.hsts {
            None => Some(HstsSettings {
                max_age: one_year(),
                include_sub_domains: true,
                preload: false,
            }),
            Some(Hsts::Off(false)) => None,
            Some(Hsts::Off(true)) => {
                return Err(PolicyError::invalid_param(
                    "hsts",
                    "is false or an object with maxAge, includeSubDomains, preload",
                ));
            }
            Some(Hsts::On(s)) => Some(s),
        };
        if let Some(h) = hsts {
            if h.preload && (!h.include_sub_domains || h.max_age < one_year()) {
                return Err(PolicyError::invalid_param(
                    "hsts.preload",
                    "requires includeSubDomains and a maxAge of at least 31536000 (browsers' preload rules)",
                ));
            }
            let mut value = format!("max-age={}", h.max_age);
            if h.include_sub_domains {
                value.push_str("; includeSubDomains");
            }
            if h.preload {
                value.push_str("; preload");
            }
            headers.push(("strict-transport-security", value));
        }
        if p.referrer_policy != "off" {
            headers.push(("referrer-policy", p.referrer_policy));
        }
        if let Some(csp) = p.content_security_policy {
            headers.push(("content-security-policy", csp));
        }
        if let Some(pp) = p.permissions_policy {
            headers.push(("permissions-policy", pp));
        }
        if headers.is_empty() && !p.remove_server_headers {
            return Err(PolicyError::invalid_param(
                "params",
                "turn off everything and the policy does nothing; remove it from the route instead",
            ));
        }
        Ok(SecurityHeaders {
            headers,
            replace: p.r#override,
            remove_server_headers: p.remove_server_headers,
        })
    }
}

impl ResponsePolicy for SecurityHeaders {
    fn on_response<'a>(&'a self, ctx: &'a mut ResponseContext) -> Outcome<'a, ResponseAction> {
        let existing = ctx.response().headers();
        let mut mods = UpstreamResponseMods::new();
        if self.remove_server_headers {
            for name in ["server", "x-powered-by"] {
                if existing.contains(name) {
                    mods = mods.remove_header(name);
                }
            }
        }
        for (name, value) in &self.headers {
            if self.replace || !existing.contains(name) {
                mods = mods.set_header(*name, value.as_str());
            }
        }
        Outcome::ready(ResponseAction::Continue(mods))
    }
}

policy_sdk::export_policy!(SecurityHeaders, phases = [response]);

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::testkit::{self, expect_response_continue};
    use policy_sdk::{HeaderOp, Metadata, Request, Response};
    use serde_json::json;

    fn run(params: serde_json::Value, response: Response) -> Vec<HeaderOp> {
        let policy: SecurityHeaders = testkit::new_policy(params).expect("valid params");
        let mut ctx = ResponseContext::new(Request::new("GET", "/"), response, Metadata::new());
        expect_response_continue(testkit::run_response(&policy, &mut ctx))
            .header_ops()
            .to_vec()
    }

    fn set(name: &str, value: &str) -> HeaderOp {
        HeaderOp::Set(name.into(), value.into())
    }

    #[test]
    fn defaults_are_safe() {
        assert_eq!(
            run(json!({}), Response::new(200)),
            [
                set("x-content-type-options", "nosniff"),
                set("x-frame-options", "DENY"),
                set(
                    "strict-transport-security",
                    "max-age=31536000; includeSubDomains"
                ),
                set("referrer-policy", "strict-origin-when-cross-origin"),
            ]
        );
    }

    #[test]
    fn upstream_values_are_kept_unless_override() {
        let upstream = || Response::new(200).with_header("x-frame-options", "SAMEORIGIN");
        let ops = run(json!({"hsts": false, "referrerPolicy": "off"}), upstream());
        assert_eq!(ops, [set("x-content-type-options", "nosniff")]);
        let ops = run(
            json!({"hsts": false, "referrerPolicy": "off", "override": true}),
            upstream(),
        );
        assert!(ops.contains(&set("x-frame-options", "DENY")), "{ops:?}");
    }

    #[test]
    fn optional_headers_preload_and_server_header_removal() {
        let ops = run(
            json!({
                "contentTypeOptions": false, "frameOptions": "off", "referrerPolicy": "no-referrer",
                "hsts": {"maxAge": 63072000, "preload": true},
                "contentSecurityPolicy": "default-src 'self'", "permissionsPolicy": "camera=()",
                "removeServerHeaders": true,
            }),
            Response::new(200)
                .with_header("server", "nginx")
                .with_header("x-powered-by", "php"),
        );
        assert_eq!(
            ops,
            [
                HeaderOp::Remove("server".into()),
                HeaderOp::Remove("x-powered-by".into()),
                set(
                    "strict-transport-security",
                    "max-age=63072000; includeSubDomains; preload"
                ),
                set("referrer-policy", "no-referrer"),
                set("content-security-policy", "default-src 'self'"),
                set("permissions-policy", "camera=()"),
            ]
        );
    }

    #[test]
    fn impossible_settings_name_their_field() {
        for (params, field) in [
            (
                json!({"hsts": {"preload": true, "includeSubDomains": false}}),
                "hsts.preload",
            ),
            (
                json!({"hsts": {"preload": true, "maxAge": 600}}),
                "hsts.preload",
            ),
            (json!({"hsts": true}), "hsts"),
            (
                json!({"contentTypeOptions": false, "frameOptions": "off", "hsts": false, "referrerPolicy": "off"}),
                "params",
            ),
        ] {
            let err = testkit::new_policy::<SecurityHeaders>(params.clone())
                .expect_err(&params.to_string());
            assert!(err.to_string().contains(field), "{err} for {params}");
        }
    }
}

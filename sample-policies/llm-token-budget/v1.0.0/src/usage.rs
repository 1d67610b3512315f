//! The tokens a model says a response used: the `usage` object of an OpenAI- or Anthropic-style
//! JSON answer, or of the events of a `text/event-stream`.

use serde_json::Value;

/// Tokens a response used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Prompt (input) tokens, when reported.
    pub prompt: Option<u64>,
    /// Completion (output) tokens, when reported.
    pub completion: Option<u64>,
    /// The total: `total_tokens`, or prompt plus completion.
    pub total: u64,
}

/// The usage a response body reports, if any. A `text/event-stream` body is read event by
/// event, later events' fields replacing earlier ones (OpenAI sends usage in the last chunk;
/// Anthropic sends input tokens first and the output count last).
pub fn from_body(content_type: Option<&str>, body: &[u8]) -> Option<Usage> {
    let stream = content_type.is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
    });
    let mut fields = Fields::default();
    if stream {
        let text = std::str::from_utf8(body).ok()?;
        for line in text.lines() {
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            if let Ok(event) = serde_json::from_str::<Value>(data.trim()) {
                fields.read_event(&event);
            }
        }
    } else {
        let answer: Value = serde_json::from_slice(body).ok()?;
        fields.read_event(&answer);
    }
    fields.usage()
}

#[derive(Debug, Default)]
struct Fields {
    prompt: Option<u64>,
    completion: Option<u64>,
    total: Option<u64>,
}

impl Fields {
    /// Reads `usage` at the top of an answer or event, or under `message` (Anthropic's
    /// `message_start`).
    fn read_event(&mut self, event: &Value) {
        for usage in [&event["usage"], &event["message"]["usage"]] {
            let field = |names: [&str; 2]| names.iter().find_map(|n| usage[n].as_u64());
            if let Some(n) = field(["prompt_tokens", "input_tokens"]) {
                self.prompt = Some(n);
            }
            if let Some(n) = field(["completion_tokens", "output_tokens"]) {
                self.completion = Some(n);
            }
            if let Some(n) = usage["total_tokens"].as_u64() {
                self.total = Some(n);
            }
        }
    }

    fn usage(self) -> Option<Usage> {
        let total = match (self.total, self.prompt, self.completion) {
            (Some(total), _, _) => total,
            (None, None, None) => return None,
            (None, prompt, completion) => {
                prompt.unwrap_or(0).saturating_add(completion.unwrap_or(0))
            }
        };
        Some(Usage {
            prompt: self.prompt,
            completion: self.completion,
            total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_answers_report_usage_openai_or_anthropic_style() {
        let openai =
            br#"{"id":"x","usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
        assert_eq!(
            from_body(Some("application/json"), openai),
            Some(Usage {
                prompt: Some(12),
                completion: Some(30),
                total: 42
            })
        );
        let anthropic = br#"{"usage":{"input_tokens":5,"output_tokens":7}}"#;
        assert_eq!(from_body(None, anthropic).map(|u| u.total), Some(12));
        assert_eq!(from_body(None, br#"{"choices":[]}"#), None);
        assert_eq!(from_body(None, b"not json"), None);
    }

    #[test]
    fn event_streams_report_usage_in_their_events() {
        let openai = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\n\
data: [DONE]\n\n";
        assert_eq!(
            from_body(Some("text/event-stream; charset=utf-8"), openai).map(|u| u.total),
            Some(7)
        );
        let anthropic = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n";
        assert_eq!(
            from_body(Some("text/event-stream"), anthropic),
            Some(Usage {
                prompt: Some(25),
                completion: Some(15),
                total: 40
            })
        );
        assert_eq!(
            from_body(Some("text/event-stream"), b"data: [DONE]\n\n"),
            None
        );
    }
}

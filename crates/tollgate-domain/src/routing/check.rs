//! The cheap check an answer from a lighter tier must pass, or the request is retried once
//! on the next tier (escalation). It looks only at what the response already holds: no
//! model call, no network.

/// Why an answer fails the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No text and no tool call.
    Empty,
    /// The model declined (a refusal stop reason, or a short answer that opens with a
    /// stock refusal phrase).
    Refusal,
    /// JSON was requested (`response_format`) and the text does not parse as JSON.
    InvalidJson,
    /// The answer was cut off by the output-token limit.
    Length,
}

impl Failure {
    /// Stable snake_case code (stored in the ledger as the escalation reason).
    pub fn code(self) -> &'static str {
        match self {
            Failure::Empty => "empty",
            Failure::Refusal => "refusal",
            Failure::InvalidJson => "invalid_json",
            Failure::Length => "length",
        }
    }
}

/// What the check needs to know of an answer.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// The answer's text (all text blocks concatenated).
    pub text: &'a str,
    /// Whether the answer calls a tool (a tool call with no text is not empty).
    pub tool_call: bool,
    /// The stop reason, normalised: `stop`, `length`, `refusal`, `tool_use`, ...
    pub finish: Option<&'a str>,
    /// The request asked for a JSON answer.
    pub json_requested: bool,
}

/// Openings of a stock refusal. Only a short answer (≤ 300 bytes) that starts with one of
/// them counts: a long answer that begins "I can't … but here is" is an answer.
const REFUSALS: &[&str] = &[
    "i can't help with",
    "i cannot help with",
    "i can't assist with",
    "i cannot assist with",
    "i'm sorry, but i can't",
    "i'm sorry, but i cannot",
    "i am sorry, but i cannot",
    "i'm unable to help",
    "i am unable to help",
    "sorry, i can't",
];

/// `None` when the answer passes; else the first reason it fails.
pub fn check(a: &Answer<'_>) -> Option<Failure> {
    if a.finish == Some("length") {
        return Some(Failure::Length);
    }
    if a.finish == Some("refusal") {
        return Some(Failure::Refusal);
    }
    let text = a.text.trim();
    if text.is_empty() && !a.tool_call {
        return Some(Failure::Empty);
    }
    if text.len() <= 300 {
        let head: String = text
            .chars()
            .take(40)
            .map(|c| {
                if c == '\u{2019}' {
                    '\''
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        if REFUSALS.iter().any(|r| head.starts_with(r)) {
            return Some(Failure::Refusal);
        }
    }
    if a.json_requested
        && !a.tool_call
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_err()
    {
        return Some(Failure::InvalidJson);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ans<'a>(text: &'a str, finish: Option<&'a str>, json: bool) -> Answer<'a> {
        Answer {
            text,
            tool_call: false,
            finish,
            json_requested: json,
        }
    }

    #[test]
    fn table() {
        let cases: &[(Answer<'_>, Option<Failure>)] = &[
            (ans("Paris.", Some("stop"), false), None),
            (ans("", Some("stop"), false), Some(Failure::Empty)),
            (ans("  \n", None, false), Some(Failure::Empty)),
            (
                ans("The answer is", Some("length"), false),
                Some(Failure::Length),
            ),
            (
                ans("I can’t help with that.", Some("stop"), false),
                Some(Failure::Refusal),
            ),
            (
                ans("Sorry, I can't do that.", Some("stop"), false),
                Some(Failure::Refusal),
            ),
            (
                ans("anything", Some("refusal"), false),
                Some(Failure::Refusal),
            ),
            (ans("{\"a\": 1}", Some("stop"), true), None),
            (
                ans("{\"a\": 1", Some("stop"), true),
                Some(Failure::InvalidJson),
            ),
            (ans("not json", Some("stop"), false), None),
        ];
        for (a, want) in cases {
            assert_eq!(check(a), *want, "{:?}", a.text);
        }
        let long = format!(
            "I can't help with X directly, but {}",
            "here is how. ".repeat(40)
        );
        assert_eq!(check(&ans(&long, Some("stop"), false)), None);
        let tool = Answer {
            text: "",
            tool_call: true,
            finish: Some("tool_use"),
            json_requested: true,
        };
        assert_eq!(check(&tool), None);
    }
}

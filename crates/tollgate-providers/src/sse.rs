//! A bounded tee over an OpenAI-style server-sent-event stream.
//!
//! The client gets the upstream's bytes unchanged. The scanner looks at each complete
//! event only to learn what the stream cost: the `usage` chunk, the `service_tier`, an
//! `error` event, `[DONE]`. Chunks are not turned into `serde_json::Value`s on the way:
//! a payload is parsed (into a small typed struct) only if it mentions `"usage"` or
//! `"error"`; other payloads are kept as raw bytes, and only read if the stream ends
//! without usage and its tokens must be counted locally.
//!
//! The client gets whole events: bytes that end mid-event wait (inside the gateway, for
//! microseconds) until the event's blank line arrives, so a stream cut short never hands
//! the client a torn event. Two options change what the client sees, never the bytes of
//! an event:
//! - `strip_usage_chunk`: drop the usage-only chunk (`choices: []`) the gateway asked
//!   for on the client's behalf.
//! - `hold_done`: keep `[DONE]` (and the stream's end) back until the caller releases it
//!   with [`SseScanner::finish`], so a strict ledger can commit the row first.

use crate::openai::{WireUsage, collect_message_text};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde::de::IgnoredAny;

/// Largest incomplete event the scanner buffers; beyond it the stream is malformed.
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;
/// Most raw payload bytes kept for local token counting.
const MAX_KEPT_PAYLOAD_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct SseScanner {
    strip_usage_chunk: bool,
    /// Keep the generated text after usage arrived (the guard hashes sampled answers).
    keep_text: bool,
    hold_done: bool,
    pending: BytesMut,
    held: BytesMut,
    kept_payloads: Vec<u8>,
    kept_overflow: bool,
    /// The last usage the stream reported.
    pub usage: Option<WireUsage>,
    pub service_tier: Option<String>,
    pub saw_done: bool,
    /// The message of an `error` event, if the upstream sent one.
    pub error: Option<String>,
    /// An event larger than [`MAX_EVENT_BYTES`] arrived: the stream is malformed.
    pub overflow: bool,
    /// A `data:` payload that is not a JSON object (nor `[DONE]`) arrived: malformed.
    pub not_json: bool,
    pub events: u64,
}

#[derive(Deserialize)]
struct ChunkLite {
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    service_tier: Option<String>,
    #[serde(default)]
    error: Option<ErrorLite>,
}

#[derive(Deserialize)]
struct ErrorLite {
    #[serde(default)]
    message: Option<String>,
}

enum Verdict {
    Forward,
    Drop,
    Hold,
}

impl SseScanner {
    pub fn new(strip_usage_chunk: bool, hold_done: bool) -> SseScanner {
        SseScanner {
            strip_usage_chunk,
            keep_text: false,
            hold_done,
            ..SseScanner::default()
        }
    }

    /// Feed an upstream chunk; returns the bytes to send to the client now.
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        if self.overflow {
            return chunk;
        }
        let data = if self.pending.is_empty() {
            chunk.clone()
        } else {
            self.pending.extend_from_slice(&chunk);
            self.pending.split().freeze()
        };
        let mut out = BytesMut::new();
        let mut kept_whole = true;
        let mut start = 0;
        while let Some(end) = event_end(&data[start..]) {
            let event = &data[start..start + end];
            match self.on_event(event) {
                Verdict::Forward => out.extend_from_slice(event),
                Verdict::Drop => kept_whole = false,
                Verdict::Hold => {
                    kept_whole = false;
                    self.held.extend_from_slice(event);
                }
            }
            start += end;
        }
        let rest = &data[start..];
        if rest.len() > MAX_EVENT_BYTES {
            self.overflow = true;
        }
        if self.overflow {
            // Give up on event boundaries; the client gets the bytes as they are.
            out.extend_from_slice(rest);
            return out.freeze();
        }
        self.pending.extend_from_slice(rest);
        if kept_whole {
            // Nothing dropped or held: the complete events are a slice of the input.
            return data.slice(..start);
        }
        out.freeze()
    }

    /// The stream ended: return everything still held back (`[DONE]`, and a final event
    /// that lacked its blank line). If the upstream broke off (`complete == false`), an
    /// incomplete trailing event is dropped rather than sent torn.
    pub fn finish(&mut self, complete: bool) -> Bytes {
        let mut out = BytesMut::new();
        if !self.pending.is_empty() && !self.overflow {
            let rest = self.pending.split().freeze();
            if complete {
                match self.on_event(&rest) {
                    Verdict::Forward | Verdict::Hold => out.extend_from_slice(&rest),
                    Verdict::Drop => {}
                }
            }
        }
        out.extend_from_slice(&self.held.split());
        out.freeze()
    }

    /// Keep the generated text even once usage is reported ([`SseScanner::generated_text`]
    /// then answers for the whole stream, within its bound).
    pub fn keep_text(&mut self) {
        self.keep_text = true;
    }

    /// Text the stream generated, for counting tokens locally when it reported no usage.
    /// `None` if more was generated than the scanner keeps.
    pub fn generated_text(&self) -> Option<String> {
        if self.kept_overflow {
            return None;
        }
        let mut out = String::new();
        for payload in self.kept_payloads.split(|b| *b == b'\n') {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
                continue;
            };
            if let Some(choices) = v.get("choices").and_then(|c| c.as_array()) {
                for c in choices {
                    if let Some(d) = c.get("delta") {
                        collect_message_text(d, &mut out);
                    }
                }
            }
        }
        Some(out)
    }

    /// Bytes of generated payload seen, for a rough count when the text was too big.
    pub fn kept_payload_bytes(&self) -> usize {
        self.kept_payloads.len()
    }

    fn on_event(&mut self, event: &[u8]) -> Verdict {
        self.events += 1;
        // Once `[DONE]` is held, whatever follows it stays behind it.
        let mut verdict = if self.held.is_empty() {
            Verdict::Forward
        } else {
            Verdict::Hold
        };
        for line in event.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(payload) = line.strip_prefix(b"data:") else {
                continue;
            };
            let payload = payload.strip_prefix(b" ").unwrap_or(payload);
            if payload == b"[DONE]" {
                self.saw_done = true;
                if self.hold_done {
                    verdict = Verdict::Hold;
                }
                continue;
            }
            // Every other payload of a Chat Completions stream is a JSON object. Only its
            // delimiters are checked here (payloads that matter are parsed below): text
            // such as `data: hello` marks the stream malformed.
            let trimmed = payload.trim_ascii();
            let object = trimmed.starts_with(b"{") && trimmed.ends_with(b"}");
            if !trimmed.is_empty() && !object {
                self.not_json = true;
            }
            let mentions = |needle: &[u8]| memchr::memmem::find(payload, needle).is_some();
            if (mentions(b"\"usage\"") || mentions(b"\"error\""))
                && let Ok(c) = serde_json::from_slice::<ChunkLite>(payload)
            {
                if let Some(t) = c.service_tier {
                    self.service_tier = Some(t);
                }
                if let Some(e) = c.error {
                    self.error = Some(e.message.unwrap_or_else(|| "upstream error".into()));
                }
                if let Some(u) = c.usage {
                    self.usage = Some(u);
                    // Usage is known: the kept text is no longer needed (unless asked).
                    if !self.keep_text {
                        self.kept_payloads = Vec::new();
                    }
                    let no_choices = c.choices.as_ref().is_none_or(Vec::is_empty);
                    if self.strip_usage_chunk && no_choices {
                        verdict = Verdict::Drop;
                    }
                    continue;
                }
            }
            if (self.usage.is_none() || self.keep_text) && !self.kept_overflow {
                if self.kept_payloads.len() + payload.len() > MAX_KEPT_PAYLOAD_BYTES {
                    self.kept_overflow = true;
                    self.kept_payloads = Vec::new();
                } else {
                    // Payloads are JSON: a raw newline cannot occur inside one.
                    self.kept_payloads.extend_from_slice(payload);
                    self.kept_payloads.push(b'\n');
                }
            }
        }
        verdict
    }
}

/// Splits an SSE byte stream into whole events (raw bytes, blank line included), for
/// the formats tollgate translates.
#[derive(Debug, Default)]
pub struct SseFramer {
    pending: BytesMut,
    /// An event larger than [`MAX_EVENT_BYTES`] arrived: the stream is malformed.
    pub overflow: bool,
}

impl SseFramer {
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Bytes> {
        let mut out = Vec::new();
        if self.overflow {
            return out;
        }
        self.pending.extend_from_slice(chunk);
        while let Some(end) = event_end(&self.pending) {
            out.push(self.pending.split_to(end).freeze());
        }
        if self.pending.len() > MAX_EVENT_BYTES {
            self.overflow = true;
            self.pending = BytesMut::new();
        }
        out
    }

    /// The stream ended: a last event without its blank line, if any.
    pub fn finish(&mut self) -> Option<Bytes> {
        if self.pending.is_empty() || self.overflow {
            return None;
        }
        Some(self.pending.split().freeze())
    }
}

/// The `event:` name and the joined `data:` lines of one SSE event.
pub fn event_fields(event: &[u8]) -> (Option<&str>, Vec<u8>) {
    let mut name = None;
    let mut data: Vec<u8> = Vec::new();
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(v) = line.strip_prefix(b"event:") {
            name = std::str::from_utf8(v).ok().map(str::trim);
        } else if let Some(v) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(v.strip_prefix(b" ").unwrap_or(v));
        }
    }
    (name, data)
}

/// Length of the first complete event in `data` (through its blank line), if any.
pub(crate) fn event_end(data: &[u8]) -> Option<usize> {
    for i in memchr::memchr_iter(b'\n', data) {
        match data.get(i + 1) {
            Some(b'\n') => return Some(i + 2),
            Some(b'\r') if data.get(i + 2) == Some(&b'\n') => return Some(i + 3),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STREAM: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"service_tier\":\"default\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"service_tier\":\"default\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":2,\"total_tokens\":22,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn run(s: &mut SseScanner, input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        for c in cuts.into_iter().chain([input.len()]) {
            if c < prev {
                continue;
            }
            out.extend_from_slice(&s.feed(Bytes::copy_from_slice(&input[prev..c])));
            prev = c;
        }
        out.extend_from_slice(&s.finish(true));
        out
    }

    #[test]
    fn pass_through_reads_usage() {
        let input = format!("{STREAM}{USAGE}{DONE}");
        let mut s = SseScanner::new(false, false);
        let out = run(&mut s, input.as_bytes(), &[7, 300, 301]);
        assert_eq!(out, input.as_bytes());
        let u = s.usage.unwrap().to_usage();
        assert_eq!((u.input, u.output), (20, 2));
        assert!(s.saw_done);
        assert_eq!(s.service_tier.as_deref(), Some("default"));
    }

    #[test]
    fn strips_only_the_injected_usage_chunk() {
        let input = format!("{STREAM}{USAGE}{DONE}");
        let mut s = SseScanner::new(true, false);
        let out = run(&mut s, input.as_bytes(), &[100, 101, 500]);
        assert_eq!(out, format!("{STREAM}{DONE}").as_bytes());
        assert!(s.usage.is_some());
    }

    #[test]
    fn holds_done_until_finish() {
        let input = format!("{STREAM}{USAGE}{DONE}");
        let mut s = SseScanner::new(false, true);
        let mut out = Vec::new();
        out.extend_from_slice(&s.feed(Bytes::from(input.clone())));
        assert_eq!(out, format!("{STREAM}{USAGE}").as_bytes());
        out.extend_from_slice(&s.finish(true));
        assert_eq!(out, input.as_bytes());
    }

    #[test]
    fn cut_stream_keeps_text_for_counting() {
        let mut s = SseScanner::new(true, false);
        let out = run(&mut s, STREAM.as_bytes(), &[50]);
        assert_eq!(out, STREAM.as_bytes());
        assert!(s.usage.is_none());
        assert_eq!(s.generated_text().unwrap(), "Hello world");
    }

    #[test]
    fn a_torn_final_event_is_dropped_when_the_stream_broke() {
        let mut s = SseScanner::new(false, false);
        let mut out = s.feed(Bytes::from(&STREAM[..300])).to_vec();
        out.extend_from_slice(&s.finish(false));
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\n\n") && STREAM.starts_with(&text));
    }

    #[test]
    fn a_payload_that_is_not_json_is_malformed() {
        let mut s = SseScanner::new(false, false);
        s.feed(Bytes::from_static(b"data: {\"choices\":[]}\n\n"));
        assert!(!s.not_json);
        s.feed(Bytes::from_static(b": keep-alive\n\ndata: [DONE]\n\n"));
        assert!(!s.not_json);
        s.feed(Bytes::from_static(b"data: this is not json\n\n"));
        assert!(s.not_json);
    }

    #[test]
    fn error_events_are_seen() {
        let mut s = SseScanner::new(false, false);
        s.feed(Bytes::from_static(
            b"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n",
        ));
        assert_eq!(s.error.as_deref(), Some("overloaded"));
    }

    #[test]
    fn crlf_events() {
        let input =
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\ndata: [DONE]\r\n\r\n";
        let mut s = SseScanner::new(true, true);
        let out = run(&mut s, input.as_bytes(), &[3]);
        assert_eq!(out, input.as_bytes());
        assert!(s.saw_done);
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_bytes_and_usage(cuts in proptest::collection::vec(0usize..2000, 0..12), strip in any::<bool>(), hold in any::<bool>()) {
            let input = format!("{STREAM}{USAGE}{DONE}");
            let mut s = SseScanner::new(strip, hold);
            let out = run(&mut s, input.as_bytes(), &cuts);
            let expected = if strip { format!("{STREAM}{DONE}") } else { input.clone() };
            prop_assert_eq!(out, expected.into_bytes());
            prop_assert_eq!(s.usage.unwrap().to_usage().input, 20);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4000), cuts in proptest::collection::vec(0usize..4000, 0..8), strip in any::<bool>(), hold in any::<bool>()) {
            let mut s = SseScanner::new(strip, hold);
            let out = run(&mut s, &data, &cuts);
            if !strip {
                // Nothing is dropped when not stripping.
                prop_assert_eq!(out.len(), data.len());
            }
            let _ = s.generated_text();
        }
    }
}

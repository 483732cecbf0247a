//! The tee every streamed answer goes through, whatever its formats: it hands the
//! client whole events (the upstream's own bytes when the client speaks the upstream's
//! format, translated ones otherwise) and learns what the stream cost.
//!
//! - OpenAI upstream, OpenAI client: [`SseScanner`], which parses only the chunks that
//!   mention usage or an error.
//! - Anthropic or Bedrock upstream, same-format client: the upstream's frames are
//!   decoded to read usage and text, and their raw bytes forwarded whole.
//! - Formats differ: frames are decoded into canonical events and re-encoded.
//!
//! A stream cut short keeps what it had: the usage it reported so far (Anthropic
//! reports the prompt's in `message_start`) and the generated text, so the meter can
//! count the rest locally. Bytes that do not decode (a torn or corrupt frame) are never
//! forwarded and never panic; the stream is then reported as malformed.

use crate::sse::SseScanner;
use crate::translate::{
    Delta, Event, Format, Frame, JsonAnswer, anthropic, bedrock, openai, responses,
};
use bytes::{Bytes, BytesMut};
use tollgate_domain::usage::Usage;

/// Most generated text kept for local token counting.
const MAX_TEXT_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug)]
enum Decoder {
    OpenAi(openai::Decoder),
    Anthropic(anthropic::Decoder),
    Bedrock(bedrock::Decoder),
}

impl Decoder {
    fn feed(&mut self, chunk: &[u8]) -> Vec<Frame> {
        match self {
            Decoder::OpenAi(d) => d.feed(chunk),
            Decoder::Anthropic(d) => d.feed(chunk),
            Decoder::Bedrock(d) => d.feed(chunk),
        }
    }

    fn finish(&mut self) -> Option<Frame> {
        match self {
            Decoder::OpenAi(d) => d.finish(),
            Decoder::Anthropic(d) => d.finish(),
            Decoder::Bedrock(d) => d.finish(),
        }
    }

    fn malformed(&self) -> bool {
        match self {
            Decoder::OpenAi(d) => d.malformed(),
            Decoder::Anthropic(d) => d.malformed(),
            Decoder::Bedrock(d) => d.malformed(),
        }
    }
}

#[derive(Debug)]
enum Encoder {
    OpenAi(openai::Encoder),
    Anthropic(anthropic::Encoder),
    Bedrock(bedrock::Encoder),
    Responses(Box<responses::Encoder>),
}

impl Encoder {
    fn encode(&mut self, ev: &Event, out: &mut BytesMut) {
        match self {
            Encoder::OpenAi(e) => e.encode(ev, out),
            Encoder::Anthropic(e) => e.encode(ev, out),
            Encoder::Bedrock(e) => e.encode(ev, out),
            Encoder::Responses(e) => e.encode(ev, out),
        }
    }
}

#[derive(Debug)]
enum Kind {
    OpenAiNative(SseScanner),
    Decoded {
        decoder: Decoder,
        /// `None`: same format, forward the upstream's frames as they are.
        encoder: Option<Encoder>,
        /// Structured output asked of an upstream as a forced tool call: that call is
        /// re-encoded as the answer's text.
        json: Option<JsonAnswer>,
    },
}

/// How the client wants a translated stream written.
#[derive(Debug, Clone)]
pub struct ClientStream {
    pub format: Format,
    /// The model name the client asked for (goes in translated events).
    pub model: String,
    /// Unix seconds, for OpenAI's `created`.
    pub created: u64,
    /// OpenAI clients: whether they asked for `stream_options.include_usage`.
    pub include_usage: bool,
    /// Responses clients: the response's id and the request fields it echoes.
    pub responses: Option<responses::Meta>,
    /// The upstream was asked for structured output as a forced tool call
    /// ([`crate::translate::json_tool`]).
    pub json_tool: bool,
}

#[derive(Debug)]
pub struct StreamTap {
    kind: Kind,
    ingress: Format,
    hold_end: bool,
    held: BytesMut,
    usage: Option<Usage>,
    usage_final: bool,
    text: String,
    text_overflow: bool,
    error: Option<String>,
    ended: bool,
}

impl StreamTap {
    /// OpenAI upstream, OpenAI client. `strip_usage_chunk`: drop the usage chunk the
    /// gateway asked for; `hold_end`: keep `[DONE]` back until [`StreamTap::finish`].
    pub fn openai_native(strip_usage_chunk: bool, hold_end: bool) -> StreamTap {
        StreamTap::with(
            Kind::OpenAiNative(SseScanner::new(strip_usage_chunk, hold_end)),
            Format::OpenAi,
            hold_end,
        )
    }

    /// Any other pair of formats (including Anthropic → Anthropic, Bedrock → Bedrock).
    pub fn decoded(upstream: Format, client: ClientStream, hold_end: bool) -> StreamTap {
        let decoder = match upstream {
            // No upstream speaks Responses; its clients are served from chat streams.
            Format::OpenAi | Format::Responses => Decoder::OpenAi(openai::Decoder::default()),
            Format::Anthropic => Decoder::Anthropic(anthropic::Decoder::default()),
            Format::Bedrock => Decoder::Bedrock(bedrock::Decoder::default()),
        };
        let encoder = (upstream != client.format).then(|| match client.format {
            Format::OpenAi => Encoder::OpenAi(openai::Encoder::new(
                &client.model,
                client.created,
                client.include_usage,
            )),
            Format::Anthropic => Encoder::Anthropic(anthropic::Encoder::new(&client.model)),
            Format::Bedrock => Encoder::Bedrock(bedrock::Encoder::default()),
            Format::Responses => {
                let meta = client.responses.clone().unwrap_or_else(|| responses::Meta {
                    id: "resp_unknown".into(),
                    model: client.model.clone(),
                    created_at: client.created,
                    echo: Default::default(),
                });
                Encoder::Responses(Box::new(responses::Encoder::new(meta)))
            }
        });
        let json = (client.json_tool && encoder.is_some()).then(JsonAnswer::default);
        StreamTap::with(
            Kind::Decoded {
                decoder,
                encoder,
                json,
            },
            client.format,
            hold_end,
        )
    }

    fn with(kind: Kind, ingress: Format, hold_end: bool) -> StreamTap {
        StreamTap {
            kind,
            ingress,
            hold_end,
            held: BytesMut::new(),
            usage: None,
            usage_final: false,
            text: String::new(),
            text_overflow: false,
            error: None,
            ended: false,
        }
    }

    fn observe(&mut self, ev: &Event) {
        match ev {
            Event::Usage { usage, final_count } => {
                self.usage = Some(*usage);
                self.usage_final |= *final_count;
            }
            Event::Delta { delta, .. } if !self.text_overflow => {
                let t = match delta {
                    Delta::Text(t) | Delta::ToolInput(t) | Delta::Thinking(t) => t.as_str(),
                    Delta::Signature(_) => "",
                };
                if self.text.len() + t.len() > MAX_TEXT_BYTES {
                    self.text_overflow = true;
                    self.text = String::new();
                } else {
                    self.text.push_str(t);
                }
            }
            Event::BlockStart {
                block: crate::translate::BlockStart::ToolUse { name, .. },
                ..
            } if !self.text_overflow => self.text.push_str(name),
            Event::Error { message, .. } => self.error = Some(message.clone()),
            Event::End => self.ended = true,
            _ => {}
        }
    }

    fn frames(&mut self, frames: Vec<Frame>, out: &mut BytesMut) {
        for f in frames {
            let mut bytes = BytesMut::new();
            for ev in f.events {
                self.observe(&ev);
                if let Kind::Decoded {
                    encoder: Some(e),
                    json,
                    ..
                } = &mut self.kind
                {
                    let ev = match json {
                        Some(j) => match j.map(ev) {
                            Some(ev) => ev,
                            None => continue,
                        },
                        None => ev,
                    };
                    e.encode(&ev, &mut bytes);
                }
            }
            if let Kind::Decoded { encoder: None, .. } = &self.kind {
                bytes.extend_from_slice(&f.raw);
            }
            if self.hold_end && (self.ended || !self.held.is_empty()) {
                self.held.extend_from_slice(&bytes);
            } else {
                out.extend_from_slice(&bytes);
            }
        }
    }

    /// Feed an upstream chunk; returns the bytes to send to the client now.
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        let frames = match &mut self.kind {
            Kind::OpenAiNative(s) => return s.feed(chunk),
            Kind::Decoded { decoder, .. } => decoder.feed(&chunk),
        };
        let mut out = BytesMut::new();
        self.frames(frames, &mut out);
        out.freeze()
    }

    /// The stream ended (`complete`: the upstream closed it normally). Returns what was
    /// held back; a torn last event is dropped when the upstream broke off.
    pub fn finish(&mut self, complete: bool) -> Bytes {
        let frame = match &mut self.kind {
            Kind::OpenAiNative(s) => return s.finish(complete),
            Kind::Decoded { decoder, .. } => {
                if complete {
                    decoder.finish()
                } else {
                    None
                }
            }
        };
        let mut out = BytesMut::new();
        if let Some(f) = frame {
            self.frames(vec![f], &mut out);
        }
        out.extend_from_slice(&self.held.split());
        out.freeze()
    }

    /// The usage the upstream reported as final, if it did.
    pub fn reported_usage(&self) -> Option<Usage> {
        match &self.kind {
            Kind::OpenAiNative(s) => s.usage.as_ref().map(|u| u.to_usage()),
            Kind::Decoded { .. } => self.usage.filter(|_| self.usage_final),
        }
    }

    /// Usage reported before the end (Anthropic's `message_start`: the prompt's), when
    /// no final count came.
    pub fn partial_usage(&self) -> Option<Usage> {
        match &self.kind {
            Kind::OpenAiNative(_) => None,
            Kind::Decoded { .. } => self.usage.filter(|_| !self.usage_final),
        }
    }

    /// Keep the generated text for [`StreamTap::generated_text`] even after usage is
    /// reported (decoded streams always keep it).
    pub fn keep_text(&mut self) {
        if let Kind::OpenAiNative(s) = &mut self.kind {
            s.keep_text();
        }
    }

    /// Text generated so far, for counting tokens locally; `None` if too much to keep.
    pub fn generated_text(&self) -> Option<String> {
        match &self.kind {
            Kind::OpenAiNative(s) => s.generated_text(),
            Kind::Decoded { .. } => (!self.text_overflow).then(|| self.text.clone()),
        }
    }

    pub fn service_tier(&self) -> Option<String> {
        match &self.kind {
            Kind::OpenAiNative(s) => s.service_tier.clone(),
            Kind::Decoded { .. } => None,
        }
    }

    /// The message of an error the upstream sent in the stream.
    pub fn error(&self) -> Option<&str> {
        match &self.kind {
            Kind::OpenAiNative(s) => s.error.as_deref(),
            Kind::Decoded { .. } => self.error.as_deref(),
        }
    }

    /// The upstream ended the stream properly (`[DONE]`, `message_stop`, `metadata`).
    pub fn completed(&self) -> bool {
        match &self.kind {
            Kind::OpenAiNative(s) => s.saw_done || s.usage.is_some(),
            Kind::Decoded { .. } => self.ended,
        }
    }

    /// A Responses client's final response object, once the stream completed.
    pub fn responses_completed(&self) -> Option<&serde_json::Value> {
        match &self.kind {
            Kind::Decoded {
                encoder: Some(Encoder::Responses(e)),
                ..
            } => e.completed(),
            _ => None,
        }
    }

    /// Bytes arrived that do not frame or decode.
    pub fn malformed(&self) -> bool {
        match &self.kind {
            Kind::OpenAiNative(s) => s.overflow || s.not_json,
            Kind::Decoded { decoder, .. } => decoder.malformed(),
        }
    }

    /// What to send the client, in its own format, when the stream broke off; `code`
    /// is the row's error code (OpenAI clients see it as `error.code`).
    pub fn cut_tail(&self, message: &str, code: &str) -> Bytes {
        match self.ingress {
            Format::OpenAi => {
                let e = crate::openai::error_body(message, "upstream_error", None, Some(code));
                Bytes::from(format!("data: {e}\n\n"))
            }
            Format::Anthropic => anthropic::Encoder::cut(message),
            Format::Bedrock => bedrock::Encoder::cut(message),
            Format::Responses => responses::Encoder::cut(message, code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANTHROPIC: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"m\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi there\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n";
    const STOP: &str = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    fn client(format: Format) -> ClientStream {
        ClientStream {
            format,
            model: "claude".into(),
            created: 0,
            include_usage: false,
            responses: None,
            json_tool: false,
        }
    }

    #[test]
    fn same_format_passes_bytes_through_and_holds_the_end_when_asked() {
        let input = format!("{ANTHROPIC}{STOP}");
        let mut t = StreamTap::decoded(Format::Anthropic, client(Format::Anthropic), true);
        let mut out = Vec::new();
        for piece in input.as_bytes().chunks(7) {
            out.extend_from_slice(&t.feed(Bytes::copy_from_slice(piece)));
        }
        assert_eq!(out, ANTHROPIC.as_bytes(), "message_stop is held");
        out.extend_from_slice(&t.finish(true));
        assert_eq!(out, input.as_bytes());
        assert!(t.completed());
        let u = t.reported_usage().unwrap();
        assert_eq!((u.input, u.output), (10, 2));
        assert_eq!(t.generated_text().as_deref(), Some("Hi there"));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_through_any_pair_never_panic(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            cuts in proptest::collection::vec(0usize..3000, 0..6),
            hold in proptest::prelude::any::<bool>(),
        ) {
            let formats = [Format::OpenAi, Format::Anthropic, Format::Bedrock];
            for up in formats {
                for down in formats.into_iter().chain([Format::Responses]) {
                    let mut t = if up == Format::OpenAi && down == Format::OpenAi {
                        StreamTap::openai_native(hold, hold)
                    } else {
                        StreamTap::decoded(up, client(down), hold)
                    };
                    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
                    cuts.sort_unstable();
                    let mut prev = 0;
                    for c in cuts.into_iter().chain([data.len()]) {
                        let _ = t.feed(Bytes::copy_from_slice(&data[prev..c]));
                        prev = c;
                    }
                    let _ = t.finish(hold);
                    let _ = (t.reported_usage(), t.partial_usage(), t.generated_text(), t.completed());
                    let _ = t.cut_tail("x", "upstream_cut");
                }
            }
        }
    }

    #[test]
    fn a_cut_stream_keeps_the_prompt_usage_and_the_text() {
        let mut t = StreamTap::decoded(Format::Anthropic, client(Format::OpenAi), false);
        let cut = ANTHROPIC.find("event: content_block_stop").unwrap();
        let out = t.feed(Bytes::copy_from_slice(&ANTHROPIC.as_bytes()[..cut]));
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.contains("\"content\":\"Hi there\""), "{text}");
        t.finish(false);
        assert!(!t.completed());
        assert!(t.reported_usage().is_none());
        assert_eq!(t.partial_usage().unwrap().input, 10);
        assert!(
            t.cut_tail("cut", "upstream_cut")
                .starts_with(b"data: {\"error\"")
        );
    }
}

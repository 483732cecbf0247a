//! Round-trip property tests of the translation: a canonical request, response or
//! stream written in a format and read back is the same, for every format, over the
//! features that format can express.

use super::*;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use serde_json::json;

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 .,!?\"'{}:\n\u{e9}\u{4e16}]{1,40}"
}

fn ident() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,12}"
}

fn cache(with_cache: bool) -> impl Strategy<Value = Option<CacheTtl>> {
    prop_oneof![
        Just(None),
        Just(if with_cache {
            Some(CacheTtl::FiveMinutes)
        } else {
            None
        }),
        Just(if with_cache {
            Some(CacheTtl::OneHour)
        } else {
            None
        }),
    ]
}

fn tool_input() -> impl Strategy<Value = Value> {
    (ident(), text(), any::<i32>()).prop_map(|(k, v, n)| json!({k: v, "n": n}))
}

/// A conversation every format can carry. OpenAI has no cache breakpoints and one
/// system message.
fn request(with_cache: bool) -> impl Strategy<Value = Request> {
    let user = (
        proptest::collection::vec((ident(), text(), any::<bool>()), 0..3),
        proptest::collection::vec((text(), cache(with_cache)), 0..3),
    )
        .prop_filter("non-empty", |(r, t)| !r.is_empty() || !t.is_empty())
        .prop_map(move |(results, texts)| {
            let mut content: Vec<Block> = results
                .into_iter()
                .map(|(id, content, err)| Block::ToolResult {
                    id,
                    content,
                    is_error: err && with_cache,
                    cache: None,
                })
                .collect();
            content.extend(
                texts
                    .into_iter()
                    .map(|(text, cache)| Block::Text { text, cache }),
            );
            Message {
                role: Role::User,
                content,
            }
        });
    let assistant = (
        proptest::option::of(text()),
        proptest::collection::vec((ident(), ident(), tool_input()), 0..3),
    )
        .prop_filter("non-empty", |(t, c)| t.is_some() || !c.is_empty())
        .prop_map(|(t, calls)| {
            let mut content = Vec::new();
            if let Some(text) = t {
                content.push(Block::Text { text, cache: None });
            }
            content.extend(calls.into_iter().map(|(id, name, input)| Block::ToolUse {
                id,
                name,
                input,
                cache: None,
            }));
            Message {
                role: Role::Assistant,
                content,
            }
        });
    let system_parts = if with_cache { 0..3usize } else { 0..2usize };
    (
        proptest::collection::vec((text(), cache(with_cache)), system_parts),
        proptest::collection::vec((user, assistant), 1..4),
        proptest::collection::vec((ident(), proptest::option::of(text())), 0..3),
        proptest::option::of(1u64..100_000),
        proptest::option::of(0u8..=10),
        proptest::collection::vec(ident(), 0..3),
        any::<bool>(),
    )
        .prop_map(
            move |(system, turns, tools, max_tokens, temp, stop, stream)| Request {
                system: system
                    .into_iter()
                    .map(|(text, cache)| SystemPart { text, cache })
                    .collect(),
                messages: turns.into_iter().flat_map(|(u, a)| [u, a]).collect(),
                tools: tools
                    .into_iter()
                    .map(|(name, description)| Tool {
                        name,
                        description,
                        schema: json!({"type": "object", "properties": {"q": {"type": "string"}}}),
                        cache: None,
                    })
                    .collect(),
                tool_choice: None,
                parallel_tool_calls: None,
                max_tokens,
                temperature: temp.map(|t| f64::from(t) / 10.0),
                top_p: None,
                stop,
                stream,
                user: None,
                response_format: None,
            },
        )
}

fn usage(cache_writes: bool, reasoning: bool) -> impl Strategy<Value = Usage> {
    (
        0u64..1_000_000,
        0u64..1_000_000,
        0u64..100_000,
        0u64..100_000,
        0u64..100_000,
    )
        .prop_map(move |(input, read, w5, w1, output)| Usage {
            input,
            cache_read: read,
            cache_write_5m: if cache_writes { w5 } else { 0 },
            cache_write_1h: if cache_writes { w1 } else { 0 },
            output,
            reasoning: if reasoning { output / 3 } else { 0 },
        })
}

fn response(format: Format) -> impl Strategy<Value = Response> {
    let stops = match format {
        // OpenAI says `stop` for both an end of turn and a stop sequence.
        Format::OpenAi => vec![
            StopReason::EndTurn,
            StopReason::MaxTokens,
            StopReason::ToolUse,
            StopReason::ContentFilter,
        ],
        _ => vec![
            StopReason::EndTurn,
            StopReason::MaxTokens,
            StopReason::StopSequence,
            StopReason::ToolUse,
            StopReason::ContentFilter,
        ],
    };
    (
        proptest::option::of(text()),
        proptest::collection::vec((ident(), ident(), tool_input()), 0..3),
        proptest::sample::select(stops),
        usage(format != Format::OpenAi, format == Format::OpenAi),
    )
        .prop_map(|(t, calls, stop, usage)| {
            let mut content = Vec::new();
            if let Some(text) = t {
                content.push(Block::Text { text, cache: None });
            }
            content.extend(calls.into_iter().map(|(id, name, input)| Block::ToolUse {
                id,
                name,
                input,
                cache: None,
            }));
            Response {
                id: "msg_1".into(),
                model: "m".into(),
                content,
                stop,
                usage,
            }
        })
}

fn through(format: Format, r: &Request) -> Request {
    let from = Format::OpenAi;
    match format {
        Format::OpenAi => {
            let v = openai::request_from_ir(r, "m", from).unwrap();
            openai::request_to_ir(v.as_object().unwrap(), from).unwrap()
        }
        Format::Anthropic => {
            let v = anthropic::request_from_ir(r, "m");
            anthropic::request_to_ir(v.as_object().unwrap(), from).unwrap()
        }
        Format::Bedrock => {
            let v = bedrock::request_from_ir(r, from).unwrap();
            bedrock::request_to_ir(v.as_object().unwrap(), r.stream, from).unwrap()
        }
        Format::Responses => unreachable!("not an upstream format"),
    }
}

/// Fill what a format always states (Anthropic requires `max_tokens`).
fn normalized(format: Format, mut r: Request) -> Request {
    if format == Format::Anthropic && r.max_tokens.is_none() {
        r.max_tokens = Some(anthropic::DEFAULT_MAX_TOKENS);
    }
    r
}

/// The answer a sequence of stream events adds up to.
fn assemble(events: &[Event]) -> Response {
    let mut blocks: Vec<(usize, Block, String)> = Vec::new();
    let mut r = Response {
        id: String::new(),
        model: String::new(),
        content: Vec::new(),
        stop: StopReason::EndTurn,
        usage: Usage::default(),
    };
    for ev in events {
        match ev {
            Event::BlockStart { index, block } => {
                let b = match block {
                    BlockStart::Text => Block::Text {
                        text: String::new(),
                        cache: None,
                    },
                    BlockStart::ToolUse { id, name } => Block::ToolUse {
                        id: id.clone(),
                        name: name.clone(),
                        input: Value::Null,
                        cache: None,
                    },
                    BlockStart::Thinking => Block::Thinking {
                        text: String::new(),
                        signature: None,
                    },
                };
                blocks.push((*index, b, String::new()));
            }
            Event::Delta { index, delta } => {
                if let Some((_, b, args)) = blocks.iter_mut().find(|(i, _, _)| i == index) {
                    match (b, delta) {
                        (Block::Text { text, .. }, Delta::Text(t)) => text.push_str(t),
                        (Block::ToolUse { .. }, Delta::ToolInput(a)) => args.push_str(a),
                        (Block::Thinking { text, .. }, Delta::Thinking(t)) => text.push_str(t),
                        _ => {}
                    }
                }
            }
            Event::Stop { reason } => r.stop = *reason,
            Event::Usage { usage, .. } => r.usage = *usage,
            _ => {}
        }
    }
    r.content = blocks
        .into_iter()
        .map(|(_, b, args)| match b {
            Block::ToolUse {
                id, name, cache, ..
            } => Block::ToolUse {
                id,
                name,
                input: parse_arguments(&args),
                cache,
            },
            other => other,
        })
        .collect();
    r
}

/// Canonical events for an answer, text split into small deltas.
fn events_of(r: &Response) -> Vec<Event> {
    let mut ev = vec![Event::Start {
        id: r.id.clone(),
        model: r.model.clone(),
    }];
    for (index, b) in r.content.iter().enumerate() {
        match b {
            Block::Text { text, .. } => {
                ev.push(Event::BlockStart {
                    index,
                    block: BlockStart::Text,
                });
                let chars: Vec<char> = text.chars().collect();
                for piece in chars.chunks(3) {
                    ev.push(Event::Delta {
                        index,
                        delta: Delta::Text(piece.iter().collect()),
                    });
                }
            }
            Block::ToolUse {
                id, name, input, ..
            } => {
                ev.push(Event::BlockStart {
                    index,
                    block: BlockStart::ToolUse {
                        id: id.clone(),
                        name: name.clone(),
                    },
                });
                let s = input.to_string();
                let mid = (0..=s.len() / 2)
                    .rev()
                    .find(|i| s.is_char_boundary(*i))
                    .unwrap_or(0);
                let (a, b) = s.split_at(mid);
                for part in [a, b] {
                    ev.push(Event::Delta {
                        index,
                        delta: Delta::ToolInput(part.to_string()),
                    });
                }
            }
            _ => {}
        }
        ev.push(Event::BlockStop { index });
    }
    ev.push(Event::Stop { reason: r.stop });
    ev.push(Event::Usage {
        usage: r.usage,
        final_count: true,
    });
    ev.push(Event::End);
    ev
}

fn encode_stream(format: Format, events: &[Event]) -> Bytes {
    let mut out = BytesMut::new();
    match format {
        Format::OpenAi => {
            let mut e = openai::Encoder::new("m", 0, true);
            for ev in events {
                e.encode(ev, &mut out);
            }
        }
        Format::Anthropic => {
            let mut e = anthropic::Encoder::new("m");
            for ev in events {
                e.encode(ev, &mut out);
            }
        }
        Format::Bedrock => {
            let mut e = bedrock::Encoder::default();
            for ev in events {
                e.encode(ev, &mut out);
            }
        }
        Format::Responses => unreachable!("not an upstream format"),
    }
    out.freeze()
}

fn decode_stream(format: Format, bytes: &[u8], cuts: &[usize]) -> Vec<Event> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(bytes.len());
    let mut frames = Vec::new();
    let mut prev = 0;
    let mut oa = openai::Decoder::default();
    let mut an = anthropic::Decoder::default();
    let mut br = bedrock::Decoder::default();
    for c in cuts {
        let piece = &bytes[prev..c];
        prev = c;
        frames.extend(match format {
            Format::OpenAi => oa.feed(piece),
            Format::Anthropic => an.feed(piece),
            Format::Bedrock => br.feed(piece),
            Format::Responses => unreachable!("not an upstream format"),
        });
    }
    frames.into_iter().flat_map(|f| f.events).collect()
}

fn without_ids(mut r: Response) -> Response {
    r.id = String::new();
    r.model = String::new();
    r
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn requests_round_trip_through_every_format(r in request(false)) {
        for f in [Format::OpenAi, Format::Anthropic, Format::Bedrock] {
            prop_assert_eq!(through(f, &r), normalized(f, r.clone()), "{:?}", f);
        }
    }

    #[test]
    fn cache_breakpoints_round_trip_between_anthropic_and_bedrock(r in request(true)) {
        for f in [Format::Anthropic, Format::Bedrock] {
            prop_assert_eq!(through(f, &r), normalized(f, r.clone()), "{:?}", f);
        }
        // And across: Anthropic → canonical → Bedrock → canonical.
        let a = anthropic::request_from_ir(&r, "m");
        let ir = anthropic::request_to_ir(a.as_object().unwrap(), Format::Bedrock).unwrap();
        let b = bedrock::request_from_ir(&ir, Format::Anthropic).unwrap();
        let back = bedrock::request_to_ir(b.as_object().unwrap(), r.stream, Format::Anthropic).unwrap();
        prop_assert_eq!(back, normalized(Format::Anthropic, r.clone()));
    }

    #[test]
    fn responses_round_trip(f in proptest::sample::select(vec![Format::OpenAi, Format::Anthropic, Format::Bedrock]), r in response(Format::Anthropic)) {
        let r = match f {
            Format::OpenAi => Response { usage: Usage { cache_write_5m: 0, cache_write_1h: 0, ..r.usage },
                stop: if r.stop == StopReason::StopSequence { StopReason::EndTurn } else { r.stop }, ..r },
            _ => Response { usage: Usage { reasoning: 0, ..r.usage }, ..r },
        };
        let back = match f {
            Format::OpenAi => {
                let v = openai::response_from_ir(&r, "m", 0);
                openai::response_to_ir(v.to_string().as_bytes()).unwrap()
            }
            Format::Anthropic => {
                let v = anthropic::response_from_ir(&r, "m");
                anthropic::response_to_ir(v.to_string().as_bytes()).unwrap()
            }
            Format::Bedrock => {
                let v = bedrock::response_from_ir(&r, 5);
                bedrock::response_to_ir(v.to_string().as_bytes()).unwrap()
            }
            Format::Responses => unreachable!("not an upstream format"),
        };
        prop_assert_eq!(without_ids(back), without_ids(r));
    }

    #[test]
    fn streams_round_trip_split_anywhere(
        f in proptest::sample::select(vec![Format::OpenAi, Format::Anthropic, Format::Bedrock]),
        r in response(Format::Bedrock),
        cuts in proptest::collection::vec(0usize..5000, 0..10),
    ) {
        let r = match f {
            Format::OpenAi => Response { usage: Usage { cache_write_5m: 0, cache_write_1h: 0, reasoning: 0, ..r.usage },
                stop: if r.stop == StopReason::StopSequence { StopReason::EndTurn } else { r.stop }, ..r },
            _ => Response { usage: Usage { reasoning: 0, ..r.usage }, ..r },
        };
        let bytes = encode_stream(f, &events_of(&r));
        let events = decode_stream(f, &bytes, &cuts);
        prop_assert!(events.contains(&Event::End), "{:?}", f);
        prop_assert_eq!(without_ids(assemble(&events)), without_ids(r));
    }

    #[test]
    fn decoders_survive_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..3000), cuts in proptest::collection::vec(0usize..3000, 0..6)) {
        for f in [Format::OpenAi, Format::Anthropic, Format::Bedrock] {
            let _ = decode_stream(f, &data, &cuts);
        }
    }
}

#[test]
fn untranslatable_features_are_named() {
    let body = json!({"model": "m", "messages": [], "logit_bias": {"1": 2}});
    let e = openai::request_to_ir(body.as_object().unwrap(), Format::Anthropic).unwrap_err();
    assert_eq!(e.param(), Some("logit_bias"));
    assert!(e.to_string().contains("Anthropic Messages"), "{e}");
    let body =
        json!({"model": "m", "max_tokens": 5, "messages": [], "thinking": {"type": "enabled"}});
    let e = anthropic::request_to_ir(body.as_object().unwrap(), Format::OpenAi).unwrap_err();
    assert_eq!(e.param(), Some("thinking"));
    let body = json!({"messages": [], "guardrailConfig": {"guardrailIdentifier": "g"}});
    let e = bedrock::request_to_ir(body.as_object().unwrap(), false, Format::OpenAi).unwrap_err();
    assert_eq!(e.param(), Some("guardrailConfig"));
    let r = Request {
        tools: vec![Tool {
            name: "t".into(),
            description: None,
            schema: json!({}),
            cache: None,
        }],
        parallel_tool_calls: Some(false),
        ..Request::default()
    };
    assert!(bedrock::request_from_ir(&r, Format::OpenAi).is_err());
    // Harmless OpenAI fields are accepted.
    let body = json!({"model": "m", "messages": [], "n": 1, "store": false, "response_format": {"type": "text"}});
    assert!(openai::request_to_ir(body.as_object().unwrap(), Format::Bedrock).is_ok());
}

use super::*;
use proptest::prelude::*;
use serde_json::json;
use tollgate_domain::prune::{Policy, Target, prune};

/// A tool output of `lines` lines; `seed` varies it (0: the same text every time).
fn output(seed: u32, lines: u32) -> String {
    (0..lines)
        .map(|i| {
            format!(
                "src/module_{seed}/file_{i}.rs:{}: let x_{i} = helper_{seed}({i});\n",
                i * 3
            )
        })
        .collect()
}

/// One agent step: (output lines, seed, client cache marker on the result).
type Step3 = (u32, u32, bool);

fn openai(steps: &[Step3]) -> Map<String, Value> {
    let mut msgs = vec![
        json!({"role": "system", "content": "You are a coding agent."}),
        json!({"role": "user", "content": "Find why the payments build fails."}),
    ];
    for (i, (lines, seed, _)) in steps.iter().enumerate() {
        let id = format!("call_{i}");
        msgs.push(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a.rs\"}"}}
        ]}));
        msgs.push(json!({"role": "tool", "tool_call_id": id, "content": output(*seed, *lines)}));
    }
    msgs.push(json!({"role": "user", "content": "Which file defines helper_3?"}));
    json!({"model": "m", "messages": msgs})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn anthropic(steps: &[Step3]) -> Map<String, Value> {
    let mut msgs = vec![json!({"role": "user", "content": "Find why the payments build fails."})];
    for (i, (lines, seed, marker)) in steps.iter().enumerate() {
        let id = format!("toolu_{i}");
        msgs.push(json!({"role": "assistant", "content": [
            {"type": "text", "text": "Reading."},
            {"type": "tool_use", "id": id, "name": "read_file", "input": {"path": "a.rs"}}
        ]}));
        let mut block =
            json!({"type": "tool_result", "tool_use_id": id, "content": output(*seed, *lines)});
        if *marker {
            block["cache_control"] = json!({"type": "ephemeral"});
        }
        msgs.push(json!({"role": "user", "content": [block]}));
    }
    msgs.push(json!({"role": "assistant", "content": "Looking."}));
    msgs.push(json!({"role": "user", "content": "Which file defines helper_3?"}));
    json!({"model": "m", "max_tokens": 100, "system": "You are a coding agent.", "messages": msgs})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn bedrock(steps: &[Step3]) -> Map<String, Value> {
    let mut msgs =
        vec![json!({"role": "user", "content": [{"text": "Find why the payments build fails."}]})];
    for (i, (lines, seed, marker)) in steps.iter().enumerate() {
        let id = format!("tooluse_{i}");
        msgs.push(json!({"role": "assistant", "content": [
            {"toolUse": {"toolUseId": id, "name": "read_file", "input": {"path": "a.rs"}}}
        ]}));
        let mut content = vec![
            json!({"toolResult": {"toolUseId": id, "content": [{"text": output(*seed, *lines)}]}}),
        ];
        if *marker {
            content.push(json!({"cachePoint": {"type": "default"}}));
        }
        msgs.push(json!({"role": "user", "content": content}));
    }
    msgs.push(json!({"role": "assistant", "content": [{"text": "Looking."}]}));
    msgs.push(json!({"role": "user", "content": [{"text": "Which file defines helper_3?"}]}));
    json!({"system": [{"text": "You are a coding agent."}], "messages": msgs})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

/// Paths of string leaves that differ; any other difference is an `Err`.
fn diff(
    a: &Value,
    b: &Value,
    path: &mut Vec<Step>,
    out: &mut Vec<Vec<Step>>,
) -> Result<(), String> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => {
            if x != y {
                out.push(path.clone());
            }
            Ok(())
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                path.push(Step::Index(i));
                diff(p, q, path, out)?;
                path.pop();
            }
            Ok(())
        }
        (Value::Object(x), Value::Object(y)) if x.len() == y.len() => {
            for (k, p) in x {
                let q = y
                    .get(k)
                    .ok_or_else(|| format!("key {k} gone at {path:?}"))?;
                // Keys are only compared, never stored in a Step.
                path.push(Step::Key("_"));
                diff(p, q, path, out)?;
                path.pop();
            }
            Ok(())
        }
        _ if a == b => Ok(()),
        _ => Err(format!("structure changed at {path:?}")),
    }
}

fn check(format: Format, body: Map<String, Value>, ratio: f64) -> Result<(), TestCaseError> {
    let view = view(format, &body).ok_or_else(|| TestCaseError::fail("no view"))?;
    let policy = Policy {
        target: Target::Ratio(ratio),
        keep_last: 2,
        ..Policy::default()
    };
    let p = prune(&view.conversation, &policy);
    let floor = view.conversation.floor;
    let messages = view.conversation.messages;
    let edited: Vec<usize> = p.edits.iter().map(|e| e.text).collect();
    let texts = view.conversation.texts.clone();
    let paths = view.paths.clone();
    let mut pruned = body.clone();
    let n = apply(&mut pruned, &paths, p.edits);
    prop_assert_eq!(n, edited.len());
    let mut changed = Vec::new();
    diff(
        &Value::Object(body.clone()),
        &Value::Object(pruned),
        &mut Vec::new(),
        &mut changed,
    )
    .map_err(TestCaseError::fail)?;
    // Only the edited texts changed, each once, none protected.
    prop_assert_eq!(changed.len(), edited.len());
    for i in edited {
        let t = &texts[i];
        prop_assert!(t.role != Role::System && t.msg >= floor && t.msg + 2 < messages);
        prop_assert!(t.msg + 1 != messages);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// In every format: pruning changes only unprotected text leaves; messages, blocks,
    /// tool calls, ids and markers are untouched (so each call keeps its result), and
    /// nothing at or before a client's cache marker changes.
    #[test]
    fn only_unprotected_text_changes(
        steps in prop::collection::vec((0u32..120, 0u32..4, prop::bool::weighted(0.1)), 0..24),
        ratio in 0.1f64..1.0,
    ) {
        check(Format::OpenAi, openai(&steps), ratio)?;
        check(Format::Anthropic, anthropic(&steps), ratio)?;
        check(Format::Bedrock, bedrock(&steps), ratio)?;
    }
}

#[test]
fn tool_names_and_floor_are_read() {
    let steps = [(50, 1, false), (50, 2, true), (50, 3, false)];
    for (format, body) in [
        (Format::OpenAi, openai(&steps)),
        (Format::Anthropic, anthropic(&steps)),
        (Format::Bedrock, bedrock(&steps)),
    ] {
        let v = view(format, &body).unwrap();
        let tools: Vec<_> = v
            .conversation
            .texts
            .iter()
            .filter(|t| t.role == Role::Tool)
            .collect();
        assert_eq!(tools.len(), 3, "{format:?}");
        assert!(
            tools.iter().all(|t| t.tool == Some("read_file")),
            "{format:?}"
        );
        assert_eq!(
            v.conversation
                .texts
                .iter()
                .filter(|t| t.role == Role::System)
                .count(),
            1
        );
        let want_floor = if format == Format::OpenAi { 0 } else { 5 };
        assert_eq!(v.conversation.floor, want_floor, "{format:?}");
    }
}

#[test]
fn a_long_history_is_pruned_in_every_format() {
    let steps: Vec<Step3> = (0..20).map(|i| (100, i, false)).collect();
    for (format, body) in [
        (Format::OpenAi, openai(&steps)),
        (Format::Anthropic, anthropic(&steps)),
        (Format::Bedrock, bedrock(&steps)),
    ] {
        let v = view(format, &body).unwrap();
        let p = prune(&v.conversation, &Policy::default());
        assert!(
            p.tokens_after * 2 <= p.tokens_before + 100,
            "{format:?}: {p:?}"
        );
        let paths = v.paths.clone();
        let mut out = body.clone();
        assert!(apply(&mut out, &paths, p.edits) > 0);
        let text = Value::Object(out).to_string();
        assert!(
            text.contains("module_3/file_"),
            "{format:?}: the matching output survives"
        );
        assert!(text.contains("[tollgate: "), "{format:?}");
    }
}

//! Pruning in each wire format: a request body read as the texts pruning may rewrite
//! (`tollgate_domain::prune`), and the edits written back in place.
//!
//! Only text is rewritten; no message, block, tool call or id is removed, so a request
//! stays valid for its format. The floor (messages never touched) is the message after
//! the last one carrying a client's prompt-cache marker (Anthropic `cache_control`,
//! Bedrock `cachePoint`).
//!
//! - OpenAI chat: `system`/`developer` content is system text; `user` content (a string
//!   or text parts) is user text; `assistant` content is assistant text (tool calls and
//!   their arguments are left alone); a `tool` message's content is the result of the
//!   call its `tool_call_id` names.
//! - Anthropic Messages: `system` (string or text blocks); a message's text blocks;
//!   `tool_result` blocks (string content or text blocks), named by their `tool_use`.
//! - Bedrock Converse: `system` text blocks; a message's `text` blocks; `toolResult`
//!   content `text` blocks, named by their `toolUse`.

use crate::translate::Format;
use serde_json::{Map, Value};
use std::collections::HashMap;
use tollgate_domain::prune::{Conversation, Edit, Role, Text};

/// Where a text sits in the body: a path of keys and indexes from the body's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(&'static str),
    Index(usize),
}

/// A body read for pruning: the conversation, and where each of its texts lives.
#[derive(Debug, Clone)]
pub struct View<'a> {
    pub conversation: Conversation<'a>,
    pub paths: Vec<Vec<Step>>,
}

struct Builder<'a> {
    texts: Vec<Text<'a>>,
    paths: Vec<Vec<Step>>,
}

impl<'a> Builder<'a> {
    fn push(
        &mut self,
        msg: usize,
        role: Role,
        tool: Option<&'a str>,
        text: &'a str,
        path: Vec<Step>,
    ) {
        self.texts.push(Text {
            msg,
            role,
            tool,
            text,
        });
        self.paths.push(path);
    }

    /// A string, or an array of `{"type": "text", "text": ...}` / `{"text": ...}` parts.
    fn content(
        &mut self,
        msg: usize,
        role: Role,
        tool: Option<&'a str>,
        v: &'a Value,
        path: Vec<Step>,
    ) {
        match v {
            Value::String(s) => self.push(msg, role, tool, s, path),
            Value::Array(parts) => {
                for (i, p) in parts.iter().enumerate() {
                    let is_text = p.get("type").is_none_or(|t| t == "text");
                    if let (true, Some(Value::String(s))) = (is_text, p.get("text")) {
                        let mut at = path.clone();
                        at.push(Step::Index(i));
                        at.push(Step::Key("text"));
                        self.push(msg, role, tool, s, at);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Read `body` (a request of `format`) for pruning; `None` without a `messages` array.
pub fn view(format: Format, body: &Map<String, Value>) -> Option<View<'_>> {
    // Responses-API inputs are items, not messages: not pruned (yet).
    if format == Format::Responses {
        return None;
    }
    let messages = body.get("messages")?.as_array()?;
    let mut b = Builder {
        texts: Vec::new(),
        paths: Vec::new(),
    };
    let mut floor = 0;
    if format != Format::OpenAi
        && let Some(system) = body.get("system")
    {
        b.content(0, Role::System, None, system, vec![Step::Key("system")]);
    }
    let mut names: HashMap<&str, &str> = HashMap::new();
    for (m, msg) in messages.iter().enumerate() {
        let base = || vec![Step::Key("messages"), Step::Index(m)];
        let role = msg.get("role").and_then(Value::as_str).unwrap_or("");
        let content = msg.get("content");
        match format {
            Format::OpenAi => {
                if let Some(Value::Array(calls)) = msg.get("tool_calls") {
                    for c in calls {
                        if let (Some(id), Some(name)) = (
                            c.get("id").and_then(Value::as_str),
                            c.pointer("/function/name").and_then(Value::as_str),
                        ) {
                            names.insert(id, name);
                        }
                    }
                }
                let (r, tool) = match role {
                    "system" | "developer" => (Role::System, None),
                    "user" => (Role::User, None),
                    "assistant" => (Role::Assistant, None),
                    "tool" | "function" => (
                        Role::Tool,
                        msg.get("tool_call_id")
                            .and_then(Value::as_str)
                            .and_then(|id| names.get(id).copied())
                            .or_else(|| msg.get("name").and_then(Value::as_str)),
                    ),
                    _ => continue,
                };
                if let Some(c) = content {
                    let mut at = base();
                    at.push(Step::Key("content"));
                    b.content(m, r, tool, c, at);
                }
            }
            Format::Responses => return None,
            Format::Anthropic | Format::Bedrock => {
                let r = if role == "assistant" {
                    Role::Assistant
                } else {
                    Role::User
                };
                let Some(c) = content else { continue };
                let Value::Array(blocks) = c else {
                    let mut at = base();
                    at.push(Step::Key("content"));
                    b.content(m, r, None, c, at);
                    continue;
                };
                for (i, block) in blocks.iter().enumerate() {
                    let mut at = base();
                    at.push(Step::Key("content"));
                    at.push(Step::Index(i));
                    if block.get("cache_control").is_some() || block.get("cachePoint").is_some() {
                        floor = m + 1;
                    }
                    if format == Format::Anthropic {
                        match block.get("type").and_then(Value::as_str) {
                            Some("text") => {
                                if let Some(Value::String(s)) = block.get("text") {
                                    at.push(Step::Key("text"));
                                    b.push(m, r, None, s, at);
                                }
                            }
                            Some("tool_use") => {
                                if let (Some(id), Some(name)) = (
                                    block.get("id").and_then(Value::as_str),
                                    block.get("name").and_then(Value::as_str),
                                ) {
                                    names.insert(id, name);
                                }
                            }
                            Some("tool_result") => {
                                let tool = block
                                    .get("tool_use_id")
                                    .and_then(Value::as_str)
                                    .and_then(|id| names.get(id).copied());
                                if let Some(inner) = block.get("content") {
                                    at.push(Step::Key("content"));
                                    b.content(m, Role::Tool, tool, inner, at);
                                }
                            }
                            _ => {}
                        }
                    } else if let Some(Value::String(s)) = block.get("text") {
                        at.push(Step::Key("text"));
                        b.push(m, r, None, s, at);
                    } else if let Some(tu) = block.get("toolUse") {
                        if let (Some(id), Some(name)) = (
                            tu.get("toolUseId").and_then(Value::as_str),
                            tu.get("name").and_then(Value::as_str),
                        ) {
                            names.insert(id, name);
                        }
                    } else if let Some(tr) = block.get("toolResult") {
                        let tool = tr
                            .get("toolUseId")
                            .and_then(Value::as_str)
                            .and_then(|id| names.get(id).copied());
                        if let Some(Value::Array(inner)) = tr.get("content") {
                            for (k, part) in inner.iter().enumerate() {
                                if let Some(Value::String(s)) = part.get("text") {
                                    let mut at = at.clone();
                                    at.extend([
                                        Step::Key("toolResult"),
                                        Step::Key("content"),
                                        Step::Index(k),
                                        Step::Key("text"),
                                    ]);
                                    b.push(m, Role::Tool, tool, s, at);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Some(View {
        conversation: Conversation {
            texts: b.texts,
            messages: messages.len(),
            floor,
        },
        paths: b.paths,
    })
}

/// Write `edits` (made on the view of `body` whose texts sit at `paths`) into `body`.
/// Returns the number written.
pub fn apply(body: &mut Map<String, Value>, paths: &[Vec<Step>], edits: Vec<Edit>) -> usize {
    let mut written = 0;
    for e in edits {
        let Some(path) = paths.get(e.text) else {
            continue;
        };
        let Some((Step::Key(first), rest)) = path.split_first() else {
            continue;
        };
        let mut at = body.get_mut(*first);
        for step in rest {
            at = match (at, step) {
                (Some(v), Step::Key(k)) => v.get_mut(*k),
                (Some(v), Step::Index(i)) => v.get_mut(*i),
                (None, _) => None,
            };
        }
        if let Some(v @ Value::String(_)) = at {
            *v = Value::String(e.new);
            written += 1;
        }
    }
    written
}

#[cfg(test)]
mod tests;

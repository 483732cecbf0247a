//! Local token counting (tiktoken-compatible BPE), for usage the upstream never reported:
//! a stream cut short, a server that sends no `usage`. Rows counted this way are marked
//! `estimated`.
//!
//! The BPE tables are compiled into the binary and decoded on first use only, so a
//! gateway that always gets usage from its upstreams never pays their memory.

use serde_json::Value;
use tiktoken_rs::CoreBPE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// GPT-4o, GPT-4.1, GPT-5, o-series.
    O200kBase,
    /// GPT-4, GPT-3.5, text-embedding-3 / ada-002.
    Cl100kBase,
}

impl Encoding {
    /// The encoding a model id uses; models of other vendors get `o200k_base`, the
    /// closest general-purpose approximation.
    pub fn for_model(model: &str) -> Encoding {
        let m = model.rsplit('/').next().unwrap_or(model);
        let cl100k = ["gpt-4-", "gpt-3.5", "gpt-35", "text-embedding-"];
        if m == "gpt-4" || cl100k.iter().any(|p| m.starts_with(p)) {
            Encoding::Cl100kBase
        } else {
            Encoding::O200kBase
        }
    }

    fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        }
    }

    /// Tokens in `text` (special-token text counted as ordinary text).
    pub fn count(self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        self.bpe().encode_ordinary(text).len() as u64
    }

    /// Prompt tokens of a chat `messages` array, as OpenAI counts them: 3 tokens of
    /// framing per message, the tokens of each string field (role, content, name and
    /// the text parts of array content, tool calls), 1 more for a `name`, and 3 to prime
    /// the reply.
    pub fn count_chat_prompt(self, messages: &[Value]) -> u64 {
        let mut n = 3;
        for m in messages {
            n += 3;
            let Some(obj) = m.as_object() else { continue };
            for (k, v) in obj {
                n += self.count_value(v);
                if k == "name" {
                    n += 1;
                }
            }
        }
        n
    }

    /// Prompt tokens of an Anthropic Messages request, counted locally: the messages as
    /// [`Encoding::count_chat_prompt`] counts a chat, the system prompt's text, and the
    /// tool definitions as their JSON text (names, descriptions and schemas). Claude's
    /// own tokenizer is not public, so this is this encoding's count, not Anthropic's.
    pub fn count_anthropic_prompt(
        self,
        system: Option<&Value>,
        messages: &[Value],
        tools: Option<&Value>,
    ) -> u64 {
        let mut n = self.count_chat_prompt(messages);
        if let Some(s) = system {
            n += self.count_value(s);
        }
        if let Some(t) = tools.filter(|t| !t.is_null()) {
            n += self.count(&t.to_string());
        }
        n
    }

    /// Tokens of the text in any JSON request body (string leaves; type tags skipped).
    pub fn count_json(self, v: &Value) -> u64 {
        self.count_value(v)
    }

    fn count_value(self, v: &Value) -> u64 {
        match v {
            Value::String(s) => self.count(s),
            Value::Array(items) => items.iter().map(|i| self.count_value(i)).sum(),
            Value::Object(o) => {
                // Content parts: count text, skip type tags; an image costs a fixed 85
                // (OpenAI's low-detail price) as a floor.
                if matches!(
                    o.get("type").and_then(Value::as_str),
                    Some("image_url" | "image")
                ) || o.get("image").is_some_and(Value::is_object)
                {
                    return 85;
                }
                o.iter()
                    .filter(|(k, _)| k.as_str() != "type")
                    .map(|(_, v)| self.count_value(v))
                    .sum()
            }
            Value::Number(_) | Value::Bool(_) => 1,
            Value::Null => 0,
        }
    }

    /// Tokens of an embeddings `input` (a string, strings, or token-id arrays).
    pub fn count_embedding_input(self, input: &Value) -> u64 {
        match input {
            Value::String(s) => self.count(s),
            Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    Value::Number(_) => 1,
                    Value::Array(ids) => ids.len() as u64,
                    other => self.count_embedding_input(other),
                })
                .sum(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_encodings() {
        assert_eq!(Encoding::for_model("gpt-4o-mini"), Encoding::O200kBase);
        assert_eq!(Encoding::for_model("openai/gpt-4.1"), Encoding::O200kBase);
        assert_eq!(Encoding::for_model("gpt-4-turbo"), Encoding::Cl100kBase);
        assert_eq!(Encoding::for_model("gpt-4"), Encoding::Cl100kBase);
        assert_eq!(
            Encoding::for_model("text-embedding-3-small"),
            Encoding::Cl100kBase
        );
    }

    #[test]
    fn anthropic_prompts_count_system_messages_and_tools() {
        let enc = Encoding::O200kBase;
        let msgs: Vec<Value> = serde_json::from_str(
            r#"[{"role":"user","content":[{"type":"text","text":"Hello!"}]}]"#,
        )
        .unwrap();
        let bare = enc.count_anthropic_prompt(None, &msgs, None);
        // role + text + framing: the same as the OpenAI-shaped chat.
        assert_eq!(
            bare,
            enc.count_chat_prompt(
                &serde_json::from_str::<Vec<Value>>(r#"[{"role":"user","content":"Hello!"}]"#)
                    .unwrap()
            )
        );
        let system = Value::from("You are a helpful assistant.");
        let tools: Value = serde_json::from_str(
            r#"[{"name":"get_weather","description":"Weather","input_schema":{"type":"object"}}]"#,
        )
        .unwrap();
        let with = enc.count_anthropic_prompt(Some(&system), &msgs, Some(&tools));
        assert_eq!(
            with,
            bare + enc.count("You are a helpful assistant.") + enc.count(&tools.to_string())
        );
        let blocks: Value =
            serde_json::from_str(r#"[{"type":"text","text":"You are a helpful assistant."}]"#)
                .unwrap();
        assert_eq!(
            enc.count_anthropic_prompt(Some(&blocks), &msgs, None),
            enc.count_anthropic_prompt(Some(&system), &msgs, None)
        );
    }

    #[test]
    fn counts_like_tiktoken() {
        // Reference counts from OpenAI's tiktoken.
        assert_eq!(Encoding::O200kBase.count("Hello world"), 2);
        assert_eq!(Encoding::Cl100kBase.count("Hello world"), 2);
        assert_eq!(Encoding::O200kBase.count(""), 0);
        let msgs: Vec<Value> = serde_json::from_str(
            r#"[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Hello!"}]"#,
        )
        .unwrap();
        // The API reference example for this conversation reports prompt_tokens: 19.
        assert_eq!(Encoding::O200kBase.count_chat_prompt(&msgs), 19);
    }
}

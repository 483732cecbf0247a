//! Token usage in one provider-neutral shape.
//!
//! Every provider reports usage its own way (OpenAI counts cached tokens *inside*
//! `prompt_tokens`; Anthropic reports them *beside* `input_tokens`). Adapters convert to
//! [`Usage`], whose fields never overlap, so cost is a plain sum of `count × rate`.

use serde::{Deserialize, Serialize};

/// Token counts by kind. Input kinds are disjoint: the prompt is
/// `input + cache_read + cache_write_5m + cache_write_1h`.
/// `reasoning` is the part of `output` the model spent reasoning (billed as output unless
/// the price table has a separate reasoning rate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens neither read from nor written to a prompt cache.
    pub input: u64,
    /// Prompt tokens read from the provider's prompt cache.
    pub cache_read: u64,
    /// Prompt tokens written to a 5-minute cache.
    pub cache_write_5m: u64,
    /// Prompt tokens written to a 1-hour cache.
    pub cache_write_1h: u64,
    /// All output tokens, reasoning included.
    pub output: u64,
    /// Reasoning tokens, a subset of `output`.
    pub reasoning: u64,
}

impl Usage {
    /// All prompt tokens, as a provider's long-context tier threshold counts them.
    pub fn prompt_total(&self) -> u64 {
        self.input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write_5m)
            .saturating_add(self.cache_write_1h)
    }

    pub fn total(&self) -> u64 {
        self.prompt_total().saturating_add(self.output)
    }

    /// OpenAI semantics: `prompt_tokens` includes `cached_tokens`; `completion_tokens`
    /// includes `reasoning_tokens`. Inconsistent counts are clamped, never negative.
    pub fn from_openai(
        prompt_tokens: u64,
        cached_tokens: u64,
        completion_tokens: u64,
        reasoning_tokens: u64,
    ) -> Usage {
        let cache_read = cached_tokens.min(prompt_tokens);
        Usage {
            input: prompt_tokens - cache_read,
            cache_read,
            cache_write_5m: 0,
            cache_write_1h: 0,
            output: completion_tokens,
            reasoning: reasoning_tokens.min(completion_tokens),
        }
    }

    pub fn add(&mut self, other: &Usage) {
        self.input = self.input.saturating_add(other.input);
        self.cache_read = self.cache_read.saturating_add(other.cache_read);
        self.cache_write_5m = self.cache_write_5m.saturating_add(other.cache_write_5m);
        self.cache_write_1h = self.cache_write_1h.saturating_add(other.cache_write_1h);
        self.output = self.output.saturating_add(other.output);
        self.reasoning = self.reasoning.saturating_add(other.reasoning);
    }
}

/// Where a row's token counts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// The provider reported them.
    Reported,
    /// Counted locally with a tokenizer (the provider never reported usage, e.g. a stream
    /// cut short).
    Estimated,
    /// No tokens were processed (the request failed before the provider did work).
    None,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Estimated => "estimated",
            UsageSource::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<UsageSource> {
        match s {
            "reported" => Some(UsageSource::Reported),
            "estimated" => Some(UsageSource::Estimated),
            "none" => Some(UsageSource::None),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_cached_tokens_are_inside_prompt_tokens() {
        let u = Usage::from_openai(2006, 1920, 300, 256);
        assert_eq!(u.input, 86);
        assert_eq!(u.cache_read, 1920);
        assert_eq!(u.prompt_total(), 2006);
        assert_eq!(u.output, 300);
        assert_eq!(u.reasoning, 256);
    }

    #[test]
    fn inconsistent_openai_counts_clamp() {
        let u = Usage::from_openai(10, 50, 5, 9);
        assert_eq!(u.input, 0);
        assert_eq!(u.cache_read, 10);
        assert_eq!(u.reasoning, 5);
    }
}

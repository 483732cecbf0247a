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

/// The most a request could have used: a prompt of at most `prompt` tokens (cache reads
/// and writes included) and an output of at most `output` tokens. Figures past it are
/// not believed (a buggy or hostile upstream): the row is priced at the bound instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageBound {
    pub prompt: u64,
    pub output: u64,
}

impl UsageBound {
    /// Largest prompt assumed when the catalog gives no context window (the largest
    /// windows offered today are 10M tokens).
    pub const DEFAULT_PROMPT: u64 = 10_000_000;
    /// Largest output assumed when neither the request nor the catalog caps it.
    pub const DEFAULT_OUTPUT: u64 = 1_000_000;
    /// A reported prompt may exceed a stale catalog's context window, but not this many
    /// times what the gateway counted locally (tokenizers differ by tens of percent).
    pub const LOCAL_FACTOR: u64 = 4;

    /// The bound for a model with context window `context` and output cap `max_output`
    /// (the catalog's), for a request that asked for at most `requested` output tokens.
    pub fn of(context: Option<u64>, max_output: Option<u64>, requested: Option<u64>) -> Self {
        UsageBound {
            prompt: context.unwrap_or(Self::DEFAULT_PROMPT),
            output: requested
                .or(max_output)
                .or(context)
                .unwrap_or(Self::DEFAULT_OUTPUT),
        }
    }

    /// Widen the prompt bound to what the local count allows (`local` tokens counted).
    pub fn with_local_prompt(self, local: u64) -> Self {
        UsageBound {
            prompt: self.prompt.max(local.saturating_mul(Self::LOCAL_FACTOR)),
            ..self
        }
    }
}

impl Usage {
    /// Whether any figure is past `bound`.
    pub fn exceeds(&self, bound: UsageBound) -> bool {
        self.prompt_total() > bound.prompt || self.output > bound.output
    }

    /// These counts clamped to `bound`: the output to its cap (reasoning within it),
    /// the prompt's kinds filled in order (input, cache read, 5-minute and 1-hour
    /// writes) up to the prompt cap. Counts within the bound are unchanged.
    pub fn clamped(&self, bound: UsageBound) -> Usage {
        let mut left = bound.prompt;
        let mut take = |n: u64| {
            let t = n.min(left);
            left -= t;
            t
        };
        let input = take(self.input);
        let cache_read = take(self.cache_read);
        let cache_write_5m = take(self.cache_write_5m);
        let cache_write_1h = take(self.cache_write_1h);
        let output = self.output.min(bound.output);
        Usage {
            input,
            cache_read,
            cache_write_5m,
            cache_write_1h,
            output,
            reasoning: self.reasoning.min(output),
        }
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
    fn usage_past_the_bound_is_clamped_to_it() {
        let b = UsageBound::of(Some(1000), Some(500), Some(50));
        assert_eq!(
            b,
            UsageBound {
                prompt: 1000,
                output: 50
            }
        );
        let fine = Usage {
            input: 900,
            cache_read: 100,
            output: 50,
            ..Usage::default()
        };
        assert!(!fine.exceeds(b));
        assert_eq!(fine.clamped(b), fine);
        let wild = Usage {
            input: 10u64.pow(17),
            cache_read: 7,
            output: u64::MAX,
            reasoning: u64::MAX,
            ..Usage::default()
        };
        assert!(wild.exceeds(b));
        let c = wild.clamped(b);
        assert_eq!(
            (c.input, c.cache_read, c.output, c.reasoning),
            (1000, 0, 50, 50)
        );
        let split = Usage {
            input: 600,
            cache_read: 600,
            cache_write_5m: 9,
            output: 1,
            ..Usage::default()
        };
        let c = split.clamped(b);
        assert_eq!((c.input, c.cache_read, c.cache_write_5m), (600, 400, 0));
        assert_eq!(c.prompt_total(), 1000);
    }

    #[test]
    fn bound_defaults_and_local_widening() {
        let b = UsageBound::of(None, None, None);
        assert_eq!(b.prompt, UsageBound::DEFAULT_PROMPT);
        assert_eq!(b.output, UsageBound::DEFAULT_OUTPUT);
        assert_eq!(UsageBound::of(Some(8000), None, None).output, 8000);
        assert_eq!(UsageBound::of(Some(8000), Some(100), None).output, 100);
        // A stale context window: the local count widens it, never narrows it.
        assert_eq!(
            UsageBound::of(Some(1000), None, None)
                .with_local_prompt(900)
                .prompt,
            3600
        );
        assert_eq!(
            UsageBound::of(Some(1000), None, None)
                .with_local_prompt(10)
                .prompt,
            1000
        );
    }

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

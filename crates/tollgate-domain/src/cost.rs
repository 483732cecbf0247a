//! Cost of a request: `Σ tokens × rate`, exact in atto-USD, charged in nano-USD rounded up.

use crate::money::Money;
use crate::pricing::{EffectiveRates, ModelPrice};
use crate::usage::Usage;

/// A priced request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// What the ledger charges: `exact_atto` rounded up to the nano-USD.
    pub charged: Money,
    /// The exact cost in atto-USD.
    pub exact_atto: u128,
    /// Exact parts, in atto-USD.
    pub parts: CostParts,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CostParts {
    pub input: u128,
    pub cache_read: u128,
    pub cache_write: u128,
    pub output: u128,
    pub reasoning: u128,
}

impl CostParts {
    pub fn sum(&self) -> u128 {
        self.input + self.cache_read + self.cache_write + self.output + self.reasoning
    }
}

/// Price `usage` at `rates`. Reasoning tokens are part of `usage.output`; they are charged
/// at the reasoning rate (which falls back to the output rate) and the rest at the output
/// rate.
pub fn cost_at(usage: &Usage, rates: &EffectiveRates) -> Cost {
    let reasoning = usage.reasoning.min(usage.output);
    let parts = CostParts {
        input: rates.input.times(usage.input),
        cache_read: rates.cache_read.times(usage.cache_read),
        cache_write: rates.cache_write_5m.times(usage.cache_write_5m)
            + rates.cache_write_1h.times(usage.cache_write_1h),
        output: rates.output.times(usage.output - reasoning),
        reasoning: rates.reasoning.times(reasoning),
    };
    let exact_atto = parts.sum();
    Cost {
        charged: Money::from_atto_ceil(exact_atto),
        exact_atto,
        parts,
    }
}

/// Price `usage` for `model`, choosing the context tier from the prompt size and the
/// service tier the provider reported. `None` if the model is unpriced.
pub fn cost(usage: &Usage, price: &ModelPrice, service_tier: Option<&str>) -> Option<Cost> {
    let rates = price.rates(usage.prompt_total(), service_tier)?;
    Some(cost_at(usage, &rates))
}

/// What `usage` would have cost without provider prompt caching: every prompt token
/// (cache reads and cache writes included) priced at the uncached input rate, at the
/// same context and service tier. The difference with [`cost`] is what caching saved
/// (negative when cache writes cost more than the reads they enabled).
pub fn cost_without_prompt_cache(
    usage: &Usage,
    price: &ModelPrice,
    service_tier: Option<&str>,
) -> Option<Cost> {
    let rates = price.rates(usage.prompt_total(), service_tier)?;
    let uncached = Usage {
        input: usage.prompt_total(),
        cache_read: 0,
        cache_write_5m: 0,
        cache_write_1h: 0,
        output: usage.output,
        reasoning: usage.reasoning,
    };
    Some(cost_at(&uncached, &rates))
}

/// What `usage` would have cost had the prompt been sent unpruned: `removed` more
/// uncached input tokens, at the context tier the longer prompt falls in, and what the
/// pruned prompt wrote to the provider's cache read instead (pruning may have rewritten
/// a cached prefix; counting it as a read makes the saving net of that rewrite). A call
/// that consumed no prompt tokens (refused, failed before the upstream) saved nothing.
pub fn cost_without_pruning(
    usage: &Usage,
    price: &ModelPrice,
    removed: u64,
    service_tier: Option<&str>,
) -> Option<Cost> {
    if usage.prompt_total() == 0 {
        return cost(usage, price, service_tier);
    }
    let unpruned = Usage {
        input: usage.input.saturating_add(removed),
        cache_read: usage
            .cache_read
            .saturating_add(usage.cache_write_5m)
            .saturating_add(usage.cache_write_1h),
        cache_write_5m: 0,
        cache_write_1h: 0,
        output: usage.output,
        reasoning: usage.reasoning,
    };
    cost(&unpruned, price, service_tier)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::{ATTO_PER_NANO, Rate};
    use crate::pricing::{PriceTable, TokenRates};
    use proptest::prelude::*;

    fn rate(usd_per_mtok: &str) -> Rate {
        Rate::parse_usd_per_mtok(usd_per_mtok).unwrap().0
    }

    #[test]
    fn openai_cached_request_matches_hand_computation() {
        // gpt-4o: $2.50 / Mtok input, $1.25 cached, $10 output.
        let price = ModelPrice::flat(TokenRates {
            input: Some(rate("2.5")),
            output: Some(rate("10")),
            cache_read: Some(rate("1.25")),
            ..TokenRates::default()
        });
        let usage = Usage::from_openai(2006, 1920, 300, 0);
        let c = cost(&usage, &price, None).unwrap();
        // 86 × 2.5e-6 + 1920 × 1.25e-6 + 300 × 1e-5 = 0.000215 + 0.0024 + 0.003 = 0.005615
        assert_eq!(c.charged, Money::from_nanos(5_615_000));
        assert_eq!(c.exact_atto, 5_615_000 * ATTO_PER_NANO);
    }

    #[test]
    fn anthropic_long_context_and_cache_writes() {
        let t = PriceTable::from_catalog_json(
            r#"{"claude-sonnet-4": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                 "cache_read_input_token_cost": 3e-07,
                 "cache_creation_input_token_cost": 3.75e-06,
                 "cache_creation_input_token_cost_above_1hr": 6e-06,
                 "input_cost_per_token_above_200k_tokens": 6e-06,
                 "output_cost_per_token_above_200k_tokens": 2.25e-05}}"#,
            "t",
        )
        .unwrap();
        let p = t.get("claude-sonnet-4").unwrap();
        let u = Usage {
            input: 1000,
            cache_read: 10_000,
            cache_write_5m: 2000,
            cache_write_1h: 500,
            output: 400,
            reasoning: 0,
        };
        let c = cost(&u, p, None).unwrap();
        // 1000×3 + 10000×0.3 + 2000×3.75 + 500×6 + 400×15 (µUSD) = 3000+3000+7500+3000+6000
        assert_eq!(c.charged, Money::from_nanos(22_500_000));
        let big = Usage {
            input: 250_000,
            output: 1000,
            ..Usage::default()
        };
        let c = cost(&big, p, None).unwrap();
        // 250000 × 6e-6 + 1000 × 2.25e-5 = 1.5 + 0.0225
        assert_eq!(c.charged, Money::from_nanos(1_522_500_000));
    }

    #[test]
    fn without_pruning_adds_the_removed_tokens_and_reads_what_was_written() {
        let t = PriceTable::from_catalog_json(
            r#"{"claude-sonnet-4": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                 "cache_read_input_token_cost": 3e-07,
                 "cache_creation_input_token_cost": 3.75e-06,
                 "input_cost_per_token_above_200k_tokens": 6e-06,
                 "output_cost_per_token_above_200k_tokens": 2.25e-05}}"#,
            "t",
        )
        .unwrap();
        let p = t.get("claude-sonnet-4").unwrap();
        let u = Usage {
            input: 1000,
            cache_write_5m: 2000,
            output: 100,
            ..Usage::default()
        };
        let c = cost_without_pruning(&u, p, 9000, None).unwrap();
        // (1000 + 9000) × 3 + 2000 × 0.3 + 100 × 15 (µUSD) = 30000 + 600 + 1500
        assert_eq!(c.charged, Money::from_nanos(32_100_000));
        // The unpruned prompt may fall in the long-context tier:
        // 201000 × 6 + 2000 × 0.3 + 100 × 22.5 (µUSD) = 1206000 + 600 + 2250
        let c = cost_without_pruning(&u, p, 200_000, None).unwrap();
        assert_eq!(c.charged, Money::from_nanos(1_208_850_000));
        // Nothing consumed: nothing saved.
        let none = cost_without_pruning(&Usage::default(), p, 5000, None).unwrap();
        assert_eq!(none.charged, Money::ZERO);
    }

    #[test]
    fn separate_reasoning_rate_applies_to_reasoning_only() {
        let price = ModelPrice::flat(TokenRates {
            input: Some(rate("2")),
            output: Some(rate("8")),
            reasoning: Some(rate("9")),
            ..TokenRates::default()
        });
        let u = Usage::from_openai(100, 0, 1000, 600);
        let c = cost(&u, &price, None).unwrap();
        // 100×2 + 400×8 + 600×9 µUSD = 200 + 3200 + 5400
        assert_eq!(c.charged, Money::from_nanos(8_800_000));
    }

    #[test]
    fn cost_without_prompt_cache_prices_cached_tokens_as_input() {
        let price = ModelPrice::flat(TokenRates {
            input: Some(rate("2.5")),
            output: Some(rate("10")),
            cache_read: Some(rate("1.25")),
            ..TokenRates::default()
        });
        let usage = Usage::from_openai(2006, 1920, 300, 0);
        let without = cost_without_prompt_cache(&usage, &price, None).unwrap();
        // 2006 × 2.5e-6 + 300 × 1e-5 = 0.005015 + 0.003
        assert_eq!(without.charged, Money::from_nanos(8_015_000));
        let with = cost(&usage, &price, None).unwrap();
        assert_eq!(without.charged.nanos() - with.charged.nanos(), 2_400_000);
    }

    #[test]
    fn unpriced_model_has_no_cost() {
        assert!(cost(&Usage::default(), &ModelPrice::default(), None).is_none());
    }

    fn arb_usage() -> impl Strategy<Value = Usage> {
        (
            0u64..5_000_000,
            0u64..5_000_000,
            0u64..1_000_000,
            0u64..1_000_000,
            0u64..1_000_000,
            0u64..1_000_000,
        )
            .prop_map(|(input, cache_read, w5, w1, output, reasoning)| Usage {
                input,
                cache_read,
                cache_write_5m: w5,
                cache_write_1h: w1,
                output,
                reasoning: reasoning.min(output),
            })
    }

    fn arb_rates() -> impl Strategy<Value = EffectiveRates> {
        proptest::array::uniform6(0u64..200_000_000_000_000).prop_map(|a| EffectiveRates {
            input: Rate::from_atto(a[0]),
            output: Rate::from_atto(a[1]),
            cache_read: Rate::from_atto(a[2]),
            cache_write_5m: Rate::from_atto(a[3]),
            cache_write_1h: Rate::from_atto(a[4]),
            reasoning: Rate::from_atto(a[5]),
        })
    }

    proptest! {
        #[test]
        fn rounding_never_under_charges(u in arb_usage(), r in arb_rates()) {
            let c = cost_at(&u, &r);
            let charged_atto = u128::try_from(c.charged.nanos()).unwrap() * ATTO_PER_NANO;
            prop_assert!(charged_atto >= c.exact_atto);
            prop_assert!(charged_atto - c.exact_atto < ATTO_PER_NANO);
            prop_assert_eq!(c.parts.sum(), c.exact_atto);
        }

        #[test]
        fn totals_equal_the_sum_of_rows(rows in proptest::collection::vec((arb_usage(), arb_rates()), 1..50)) {
            let charged: Vec<Money> = rows.iter().map(|(u, r)| cost_at(u, r).charged).collect();
            let total: Money = charged.iter().copied().sum();
            let by_hand: i128 = charged.iter().map(|m| i128::from(m.nanos())).sum();
            prop_assert_eq!(i128::from(total.nanos()), by_hand);
            // And the total is never below the exact cost of the whole workload.
            let exact: u128 = rows.iter().map(|(u, r)| cost_at(u, r).exact_atto).sum();
            prop_assert!(u128::try_from(total.nanos()).unwrap() * ATTO_PER_NANO >= exact);
        }

        #[test]
        fn cost_is_monotonic_in_tokens(u in arb_usage(), r in arb_rates(), extra in 0u64..10_000) {
            let mut more = u;
            more.input += extra;
            prop_assert!(cost_at(&more, &r).charged >= cost_at(&u, &r).charged);
        }
    }
}

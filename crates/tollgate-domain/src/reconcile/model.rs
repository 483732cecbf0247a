//! Making model ids from different sources comparable.
//!
//! The ledger has the id the deployment called upstream (`gpt-4o-mini`,
//! `claude-sonnet-4-5`, `us.amazon.nova-2-lite-v1:0`); exports write the provider's own
//! (`gpt-4o-mini-2024-07-18`, `claude-sonnet-4-5-20250929`, a Bedrock usage type
//! `USE1-Nova2Lite-input-tokens`). [`canonical`] applies one rule to both sides:
//!
//! 1. trim, lower-case;
//! 2. keep what follows the last `/` (`openai/gpt-4o`, a Bedrock model or inference
//!    profile ARN `arn:aws:bedrock:…:inference-profile/us.amazon.nova-2-lite-v1:0`);
//! 3. drop a Bedrock cross-region prefix (`us.`, `eu.`, `apac.`, `global.`, `us-gov.`,
//!    `jp.`, `au.`, `ca.`) and then a Bedrock vendor prefix (`amazon.`, `anthropic.`,
//!    `meta.`, `mistral.`, `cohere.`, `ai21.`, `deepseek.`, `openai.`, `qwen.`,
//!    `writer.`, `twelvelabs.`, `stability.`);
//! 4. drop a Bedrock version suffix (`-v1:0`, `-v2`, `:0`) and a snapshot date
//!    (`-2024-07-18`, `-20250929`), and `-latest`.
//!
//! So a regional profile and its base model compare equal (`us.amazon.nova-2-lite-v1:0`
//! and `amazon.nova-2-lite-v1:0` are both `nova-2-lite`), and a dated snapshot equals its
//! alias. That is a choice: an alias can move to a new snapshot at another price, and a
//! regional profile can be priced apart from its base model; a drift then shows as a
//! price drift on the alias.
//!
//! AWS usage types name a model family without separators (`Nova2Lite`,
//! `Claude4.5Sonnet`); [`family`] reduces both sides to the sorted list of their letter
//! and digit runs (`nova-2-lite` and `Nova2Lite` are both `2 lite nova`), which matches a
//! usage type with the one gateway model of that family. Two gateway models of one
//! family, or none, leave the usage type apart (and say so in a note).

const REGIONS: [&str; 8] = ["us", "eu", "apac", "global", "us-gov", "jp", "au", "ca"];
const VENDORS: [&str; 12] = [
    "amazon",
    "anthropic",
    "meta",
    "mistral",
    "cohere",
    "ai21",
    "deepseek",
    "openai",
    "qwen",
    "writer",
    "twelvelabs",
    "stability",
];

fn strip_dot_prefix<'a>(s: &'a str, prefixes: &[&str]) -> &'a str {
    match s.split_once('.') {
        Some((head, rest)) if prefixes.contains(&head) && !rest.is_empty() => rest,
        _ => s,
    }
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The comparable form of a model id (rules in the module doc).
pub fn canonical(id: &str) -> String {
    let lower = id.trim().to_ascii_lowercase();
    let mut s = lower.rsplit('/').next().unwrap_or(&lower);
    s = strip_dot_prefix(s, &REGIONS);
    let unvendored = strip_dot_prefix(s, &VENDORS);
    let mut bedrock = unvendored.len() != s.len();
    let mut s = unvendored.to_string();
    // `:0` (Bedrock revision), then `-v1` (Bedrock version; only in Bedrock ids, so
    // `deepseek-v3` stays itself).
    if let Some((head, rev)) = s.rsplit_once(':')
        && all_digits(rev)
    {
        s.truncate(head.len());
        bedrock = true;
    }
    if bedrock
        && let Some((head, v)) = s.rsplit_once("-v")
        && all_digits(v)
    {
        s.truncate(head.len());
    }
    if let Some(head) = s.strip_suffix("-latest") {
        s = head.to_string();
    }
    // -20250929
    if let Some((head, date)) = s.rsplit_once('-')
        && date.len() == 8
        && all_digits(date)
    {
        s.truncate(head.len());
    }
    // -2024-07-18
    let parts: Vec<&str> = s.rsplitn(4, '-').collect();
    if parts.len() == 4
        && parts[2].len() == 4
        && parts[1].len() == 2
        && parts[0].len() == 2
        && parts[..3].iter().all(|p| all_digits(p))
    {
        s = parts[3].to_string();
    }
    s
}

/// Letter runs and digit runs, lower-cased, sorted and joined by spaces. CamelCase starts
/// a new run (`NovaLite` → `lite nova`).
pub fn family(name: &str) -> String {
    let mut runs: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut prev: Option<char> = None;
    for ch in name.chars() {
        let boundary = match prev {
            None => true,
            Some(p) => {
                !ch.is_ascii_alphanumeric()
                    || !p.is_ascii_alphanumeric()
                    || p.is_ascii_digit() != ch.is_ascii_digit()
                    || (p.is_ascii_lowercase() && ch.is_ascii_uppercase())
            }
        };
        if boundary && !cur.is_empty() {
            runs.push(std::mem::take(&mut cur));
        }
        if ch.is_ascii_alphanumeric() {
            cur.push(ch.to_ascii_lowercase());
        }
        prev = Some(ch);
    }
    if !cur.is_empty() {
        runs.push(cur);
    }
    runs.sort();
    runs.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_ids() {
        let cases = [
            ("gpt-4o-mini", "gpt-4o-mini"),
            ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
            ("GPT-4o", "gpt-4o"),
            ("openai/gpt-4.1", "gpt-4.1"),
            ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
            ("claude-sonnet-4-5", "claude-sonnet-4-5"),
            ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
            ("us.amazon.nova-2-lite-v1:0", "nova-2-lite"),
            ("amazon.nova-2-lite-v1:0", "nova-2-lite"),
            (
                "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
                "claude-sonnet-4-5",
            ),
            (
                "arn:aws:bedrock:us-east-1:111122223333:inference-profile/us.amazon.nova-2-lite-v1:0",
                "nova-2-lite",
            ),
            ("meta.llama3-1-70b-instruct-v1:0", "llama3-1-70b-instruct"),
            ("o3-mini", "o3-mini"),
            // Not a date, not a Bedrock version: kept.
            ("gpt-4-0613", "gpt-4-0613"),
            ("deepseek-v3", "deepseek-v3"),
        ];
        for (id, want) in cases {
            assert_eq!(canonical(id), want, "{id}");
        }
    }

    #[test]
    fn families_match_usage_type_names() {
        assert_eq!(family("Nova2Lite"), family("nova-2-lite"));
        assert_eq!(family("NovaLite"), family("nova-lite"));
        assert_eq!(family("Claude4.5Sonnet"), family("claude-sonnet-4-5"));
        assert_ne!(family("Nova2Lite"), family("nova-2-pro"));
        assert_ne!(family("NovaLite"), family("nova-2-lite"));
        assert_eq!(family("Nova2Lite"), "2 lite nova");
    }
}

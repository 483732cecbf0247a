use super::*;
use proptest::prelude::*;

fn text(msg: usize, role: Role, tool: Option<&'static str>, text: &'static str) -> Text<'static> {
    Text {
        msg,
        role,
        tool,
        text,
    }
}

fn filler(seed: usize, lines: usize) -> String {
    (0..lines)
        .map(|i| {
            format!(
                "    let value_{seed}_{i} = compute_{}(input, {i});\n",
                seed * 7 + i
            )
        })
        .collect()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// An agent's history: system, task, then (assistant, tool) pairs, a final question.
fn history(pairs: usize, fact_at: usize) -> Conversation<'static> {
    let mut texts = vec![
        text(
            0,
            Role::System,
            None,
            "You are a coding agent. Use the tools.",
        ),
        text(
            1,
            Role::User,
            None,
            "Fix the failing build of the payments service.",
        ),
    ];
    let mut msg = 2;
    for p in 0..pairs {
        texts.push(text(
            msg,
            Role::Assistant,
            None,
            "Let me look at the next file.",
        ));
        let mut out = filler(p, 120);
        if p == fact_at {
            out.push_str("STAGING_DB_PORT=6433\n");
            out.push_str(&filler(p + 1000, 40));
        }
        texts.push(text(msg + 1, Role::Tool, Some("read_file"), leak(out)));
        msg += 2;
    }
    texts.push(text(
        msg,
        Role::User,
        None,
        "Before you finish: which port does the staging database listen on?",
    ));
    Conversation {
        texts,
        messages: msg + 1,
        floor: 0,
    }
}

fn applied(conv: &Conversation<'_>, p: &Pruned) -> Vec<String> {
    let mut out: Vec<String> = conv.texts.iter().map(|t| t.text.to_string()).collect();
    for e in &p.edits {
        out[e.text] = e.new.clone();
    }
    out
}

#[test]
fn an_early_fact_survives_a_halving() {
    let conv = history(30, 2);
    let p = prune(&conv, &Policy::default());
    assert!(p.tokens_after * 2 <= p.tokens_before + 50, "{p:?}");
    let all = applied(&conv, &p).join("\n");
    assert!(all.contains("STAGING_DB_PORT=6433"));
    assert!(all.contains("[tollgate: "));
}

#[test]
fn under_the_target_nothing_changes() {
    let conv = history(2, 0);
    let p = prune(
        &conv,
        &Policy {
            target: Target::Tokens(1_000_000),
            ..Policy::default()
        },
    );
    assert!(p.edits.is_empty());
    assert_eq!(p.tokens_before, p.tokens_after);
}

#[test]
fn an_earlier_duplicate_is_replaced_and_the_latest_kept() {
    let dump = leak(filler(1, 80));
    let conv = Conversation {
        texts: vec![
            text(0, Role::User, None, "Read the file twice."),
            text(1, Role::Tool, Some("read_file"), dump),
            text(2, Role::Tool, Some("read_file"), dump),
            text(3, Role::Assistant, None, "ok"),
            text(4, Role::User, None, "Thanks."),
        ],
        messages: 5,
        floor: 0,
    };
    let p = prune(
        &conv,
        &Policy {
            keep_last: 1,
            strategies: Strategies::parse(["dedupe"]).unwrap(),
            ..Policy::default()
        },
    );
    assert_eq!(p.edits.len(), 1);
    assert_eq!(p.edits[0].text, 1);
    assert!(p.edits[0].new.contains("tool `read_file`"));
    assert!(p.edits[0].new.contains("repeated later"));
}

#[test]
fn placeholder_names_tool_and_tokens() {
    let t = text(1, Role::Tool, Some("read_file"), "");
    assert_eq!(
        placeholder(&t, 4812, None),
        "[tollgate: 4,812 tokens of output from tool `read_file` removed]"
    );
    assert_eq!(thousands(1_234_567), "1,234,567");
    assert_eq!(thousands(999), "999");
}

#[test]
fn a_long_tool_output_is_capped_keeping_the_matching_line() {
    let mut out = filler(3, 600);
    out.insert_str(out.len() / 2, "the staging database port is 6433\n");
    let out = leak(out);
    let conv = Conversation {
        texts: vec![
            text(0, Role::User, None, "go"),
            text(1, Role::Tool, Some("grep"), out),
            text(
                2,
                Role::User,
                None,
                "which port does the staging database use?",
            ),
        ],
        messages: 3,
        floor: 0,
    };
    let p = prune(
        &conv,
        &Policy {
            keep_last: 1,
            tool_max_tokens: 500,
            strategies: Strategies::parse(["cap_tool_output"]).unwrap(),
            ..Policy::default()
        },
    );
    let new = &p.edits[0].new;
    assert!(new.contains("port is 6433"));
    assert!(new.starts_with("    let value_3_0"));
    assert!(new.contains("lines removed]"));
    assert!(tokens::estimate(new) <= 500 + 40);
}

#[test]
fn nothing_before_the_floor_is_touched() {
    let mut conv = history(20, 1);
    conv.floor = 20;
    let p = prune(&conv, &Policy::default());
    assert!(!p.edits.is_empty());
    for e in &p.edits {
        assert!(conv.texts[e.text].msg >= 20);
    }
}

#[test]
fn strategies_parse_names() {
    assert_eq!(Strategies::parse(Strategies::NAMES), Ok(Strategies::ALL));
    assert_eq!(Strategies::parse(["nope"]), Err("nope".to_string()));
}

fn arb_conversation() -> impl Strategy<Value = (Vec<(u8, u16, u8)>, usize, usize)> {
    // (role, lines, seed) per message; floor; keep_last.
    (
        prop::collection::vec((0u8..4, 0u16..200, 0u8..8), 1..40),
        0usize..40,
        0usize..10,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Protected texts never change; edits are non-empty; the estimate never grows;
    /// each text is edited at most once.
    #[test]
    fn invariants_hold((spec, floor, keep_last) in arb_conversation(), ratio in 0.05f64..1.0) {
        let mut owned: Vec<(usize, Role, String)> = Vec::new();
        for (m, (role, lines, seed)) in spec.iter().enumerate() {
            let role = match role { 0 => Role::System, 1 => Role::User, 2 => Role::Assistant, _ => Role::Tool };
            let body = if *seed == 0 && m > 0 {
                filler(1, usize::from(*lines))
            } else {
                filler(usize::from(*seed) * 31 + m, usize::from(*lines))
            };
            owned.push((m, role, body));
        }
        let conv = Conversation {
            texts: owned
                .iter()
                .map(|(m, r, s)| Text { msg: *m, role: *r, tool: Some("t"), text: s.as_str() })
                .collect(),
            messages: owned.len(),
            floor,
        };
        let policy = Policy { target: Target::Ratio(ratio), keep_last, ..Policy::default() };
        let p = prune(&conv, &policy);
        prop_assert!(p.tokens_after <= p.tokens_before);
        prop_assert_eq!(p.tokens_before, conversation_tokens(&conv));
        let last_user = conv.texts.iter().rposition(|t| t.role == Role::User).map(|i| conv.texts[i].msg);
        let mut seen = std::collections::HashSet::new();
        for e in &p.edits {
            prop_assert!(seen.insert(e.text));
            let t = &conv.texts[e.text];
            prop_assert!(t.role != Role::System);
            prop_assert!(t.msg >= floor);
            prop_assert!(t.msg + keep_last < conv.messages);
            prop_assert!(Some(t.msg) != last_user);
            prop_assert!(!e.new.trim().is_empty());
            prop_assert!(e.new.len() < t.text.len());
        }
        // Deterministic.
        prop_assert_eq!(prune(&conv, &policy), p);
    }
}

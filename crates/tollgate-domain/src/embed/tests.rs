use super::static_model::builtin;
use super::*;

#[test]
fn tokenizer_matches_reference_ids() {
    // ids from the `tokenizers` PyPI package on all-MiniLM-L6-v2's tokenizer.json
    let m = builtin().unwrap();
    let t = m.tokenizer();
    assert_eq!(t.tokenize("Hello, world!"), vec![7592, 1010, 2088, 999]);
    assert_eq!(t.tokenize("unaffable"), vec![14477, 20961, 3468]);
    assert_eq!(t.tokenize("Café déjà vu"), t.tokenize("cafe deja vu"));
    assert_eq!(t.tokenize("東京"), vec![1879, 1755]);
    assert_eq!(t.tokenize(""), Vec::<u32>::new());
    assert_eq!(t.tokenize(&"x".repeat(101)), vec![100]);
}

#[test]
fn builtin_matches_the_distillation_script() {
    let m = builtin().unwrap();
    assert_eq!(m.name(), "static-minilm-96");
    assert_eq!(m.dim(), 96);
    assert!(m.threshold() > 0.0 && m.threshold() < 1.0);
    let data: Vec<serde_json::Value> = serde_json::from_str(include_str!(
        "../../data/static-minilm-96-test-vectors.json"
    ))
    .unwrap();
    for row in data {
        let text = row["text"].as_str().unwrap();
        let want: Vec<f32> = row["vector"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = m.embed(text);
        assert_eq!(got.len(), 96);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{text}: {a} vs {b}");
        }
    }
}

#[test]
fn embeddings_are_normalised_and_paraphrases_score_higher() {
    let m = builtin().unwrap();
    let a = m.embed("How do I reset my password?");
    let b = m.embed("I forgot my password, how can I get a new one?");
    let c = m.embed("What is the capital of Australia?");
    let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    assert!(cosine(&a, &b) > cosine(&a, &c) + 0.2);
    assert_eq!(m.embed(""), vec![0.0; 96]);
    assert_eq!(cosine(&m.embed(""), &a), 0.0);
}

#[test]
fn embed_into_reuses_the_buffer() {
    let m = builtin().unwrap();
    let mut v = Vec::with_capacity(96);
    m.embed_into("first text", &mut v);
    let first = v.clone();
    m.embed_into("second text", &mut v);
    assert_eq!(v.len(), 96);
    assert_ne!(first, v);
    let boxed: Box<dyn Embedder> = Box::new(m.clone());
    assert_eq!(boxed.embed("second text"), v);
}

#[test]
fn malformed_models_are_errors_not_panics() {
    assert!(StaticModel::from_bytes(b"nope", "[UNK]\n[CLS]\n[SEP]\n").is_err());
    assert!(MiniLm::from_bytes(&[1, 0, 0, 0, 0, 0, 0, 0, b'{'], "[UNK]\n[CLS]\n[SEP]\n").is_err());
    assert!(MiniLm::from_bytes(&[], "").is_err());
    let header = br#"{"embeddings.word_embeddings.weight":{"dtype":"F32","shape":[3,384],"data_offsets":[0,4]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    st.extend_from_slice(&[0; 4]);
    let e = MiniLm::from_bytes(&st, "[UNK]\n[CLS]\n[SEP]\n").unwrap_err();
    assert_eq!(e.code(), "embed_model_tensor");
}

#[test]
fn cosine_edge_cases() {
    assert_eq!(cosine(&[1.0, 0.0], &[0.0, 1.0]), 0.0);
    assert!((cosine(&[1.0, 1.0], &[2.0, 2.0]) - 1.0).abs() < 1e-6);
    assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
}

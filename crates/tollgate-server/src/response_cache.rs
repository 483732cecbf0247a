//! The gateway's response cache: answers replayed for repeated requests, exactly or by a
//! similar last user turn, never across tenants.
//!
//! - The exact key hashes the tenant scope, the deployment, the API, stream or not, and
//!   the whole request body but attribution and transport fields
//!   (`tollgate_domain::cache::key`). A cached answer is the bytes the client got (a JSON
//!   body, or a complete event stream in its format, usage included): a hit replays them.
//! - The semantic index holds, per context key (the same hash with the last user turn's
//!   text left out), the embedding of that text; a lookup scans only its own context, so
//!   every earlier turn, tool result, system prompt and parameter must match exactly.
//!   The threshold is the embedding model's own (chosen for ≤ 1 % false hits on the
//!   evaluation set), or `cache.semantic_threshold`.
//! - Bounded by entries and bytes (LRU), each entry with its TTL; persisted to a SQLite
//!   file by a background thread so a restart keeps the entries (`cache.store`).
//!
//! Only complete answers are stored: an upstream error, a cut or malformed stream, an
//! answer stopped by its token cap, or one that failed an escalation check never is.

use crate::config::cache::{CacheSettings, CacheStore};
use crate::ingress::IngressRequest;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tollgate_domain::cache::exact::ExactIndex;
use tollgate_domain::cache::key::{KeyParts, key};
use tollgate_domain::cache::semantic::SemanticIndex;
use tollgate_domain::cache::{Bounds, ContextKey, ValueId};
use tollgate_domain::embed::{Embedder, MiniLm, static_model};
use tollgate_domain::usage::Usage;
use tollgate_store::response_cache::{CacheFile, StoredEntry};

/// One cached answer.
#[derive(Debug)]
pub struct Entry {
    pub id: ValueId,
    pub exact: u128,
    pub context: Option<u128>,
    pub body: Bytes,
    pub content_type: String,
    pub stream: bool,
    pub usage: Usage,
    pub service_tier: Option<String>,
    pub deployment: String,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// The keys of one request.
#[derive(Debug, Clone)]
pub struct Keys {
    pub exact: u128,
    /// The context key and the last turn's embedding, when the request has a text-only
    /// last user turn and semantic matching is on.
    pub semantic: Option<(ContextKey, Vec<f32>)>,
}

/// A lookup's result.
#[derive(Debug, Clone)]
pub enum Found {
    Exact(Arc<Entry>),
    Semantic(Arc<Entry>, f32),
}

#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits_exact: AtomicU64,
    pub hits_semantic: AtomicU64,
    pub misses: AtomicU64,
    pub stored: AtomicU64,
    pub evicted: AtomicU64,
}

struct Inner {
    exact: ExactIndex,
    semantic: SemanticIndex,
    values: HashMap<ValueId, Arc<Entry>>,
    next_id: ValueId,
}

impl Inner {
    /// Forget values the indexes let go of.
    fn drop_values(&mut self, ids: Vec<ValueId>, file: Option<&CacheFile>, stats: &CacheStats) {
        if ids.is_empty() {
            return;
        }
        let mut gone = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(e) = self.values.remove(&id) {
                self.exact.remove_value(e.exact, id);
                self.semantic.remove(id);
                gone.push(id);
            }
        }
        stats
            .evicted
            .fetch_add(gone.len() as u64, Ordering::Relaxed);
        if let Some(f) = file {
            f.remove(gone);
        }
    }
}

pub struct ResponseCache {
    inner: Mutex<Inner>,
    embedder: Arc<dyn Embedder>,
    threshold: f32,
    semantic: bool,
    max_entry_bytes: usize,
    file: Option<CacheFile>,
    pub stats: CacheStats,
}

/// Per-entry TTLs are checked on the entries; the indexes only bound memory.
const INDEX_TTL_MS: u64 = 365 * 86_400_000;

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredUsage {
    usage: Usage,
    service_tier: Option<String>,
}

impl ResponseCache {
    /// Build the cache: the embedding model (compiled in, or all-MiniLM-L6-v2 from
    /// `cache.embedding_model_dir`), the indexes, and the entries the file still holds.
    pub fn open(s: &CacheSettings, now_ms: i64) -> Result<ResponseCache, String> {
        let embedder: Arc<dyn Embedder> = match &s.embedding_model_dir {
            Some(dir) => {
                let read = |name: &str| {
                    std::fs::read(dir.join(name)).map_err(|e| {
                        format!(
                            "cache.embedding_model_dir: {}: {e}",
                            dir.join(name).display()
                        )
                    })
                };
                let weights = read("model.safetensors")?;
                let vocab = String::from_utf8(read("vocab.txt")?)
                    .map_err(|e| format!("cache.embedding_model_dir: vocab.txt: {e}"))?;
                Arc::new(
                    MiniLm::from_bytes(&weights, &vocab)
                        .map_err(|e| format!("cache.embedding_model_dir: {e}"))?,
                )
            }
            None => {
                let m = static_model::builtin().map_err(|e| format!("embedding model: {e}"))?;
                Arc::new(StaticRef(m))
            }
        };
        let bounds = Bounds {
            max_entries: s.max_entries,
            max_bytes: s.max_bytes,
            ttl_ms: INDEX_TTL_MS,
        };
        let inner = Inner {
            exact: ExactIndex::new(bounds),
            semantic: SemanticIndex::new(embedder.dim(), bounds),
            values: HashMap::new(),
            next_id: 1,
        };
        let (file, live) = match &s.store {
            CacheStore::Memory => (None, Vec::new()),
            CacheStore::Sqlite(path) => {
                let (f, live) = CacheFile::open(path, now_ms, s.max_entries)
                    .map_err(|e| format!("cache file {}: {e}", path.display()))?;
                (Some(f), live)
            }
        };
        let threshold = s.semantic_threshold.unwrap_or_else(|| embedder.threshold());
        let cache = ResponseCache {
            inner: Mutex::new(inner),
            embedder,
            threshold,
            semantic: s.semantic,
            max_entry_bytes: s.max_entry_bytes,
            file,
            stats: CacheStats::default(),
        };
        cache.restore(live, now_ms);
        Ok(cache)
    }

    /// Put entries read back from the file into the indexes (oldest first).
    fn restore(&self, live: Vec<StoredEntry>, now_ms: i64) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for e in live {
            let Ok(u) = serde_json::from_str::<StoredUsage>(&e.usage) else {
                continue;
            };
            g.next_id = g.next_id.max(e.id + 1);
            let entry = Arc::new(Entry {
                id: e.id,
                exact: e.exact,
                context: e.context,
                body: Bytes::from(e.body),
                content_type: e.content_type,
                stream: e.stream,
                usage: u.usage,
                service_tier: u.service_tier,
                deployment: e.deployment,
                created_ms: e.created_ms,
                expires_ms: e.expires_ms,
            });
            let semantic = match (e.context, e.embedding) {
                (Some(c), Some(emb)) if emb.len() == self.embedder.dim() => Some((c, emb)),
                _ => None,
            };
            self.index(&mut g, entry, semantic, now_ms);
        }
    }

    fn index(
        &self,
        g: &mut Inner,
        entry: Arc<Entry>,
        semantic: Option<(u128, Vec<f32>)>,
        now_ms: i64,
    ) {
        let now = now_ms.max(0) as u64;
        let bytes = entry.body.len() + entry.content_type.len() + 64;
        let id = entry.id;
        let exact = entry.exact;
        g.values.insert(id, entry);
        let mut gone = g.exact.insert(exact, id, bytes, now);
        if let Some((c, emb)) = semantic {
            gone.extend(g.semantic.insert(ContextKey(c), &emb, id, bytes, now));
        }
        // Replaced, evicted, or (too large for the bounds) this very value.
        g.drop_values(gone, self.file.as_ref(), &self.stats);
    }

    /// The embedding model's name (for the semantic-similarity header and logs).
    pub fn model(&self) -> &str {
        self.embedder.name()
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    pub fn max_entry_bytes(&self) -> usize {
        self.max_entry_bytes
    }

    /// The cache's own series in the Prometheus text format (appended to `/metrics`).
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let (entries, bytes) = self.size();
        let st = &self.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = write!(
            out,
            "# HELP tollgate_response_cache_lookups_total Response-cache lookups by result.\n\
             # TYPE tollgate_response_cache_lookups_total counter\n\
             tollgate_response_cache_lookups_total{{result=\"hit_exact\"}} {}\n\
             tollgate_response_cache_lookups_total{{result=\"hit_semantic\"}} {}\n\
             tollgate_response_cache_lookups_total{{result=\"miss\"}} {}\n\
             # HELP tollgate_response_cache_stored_total Answers stored in the response cache.\n\
             # TYPE tollgate_response_cache_stored_total counter\n\
             tollgate_response_cache_stored_total {}\n\
             # HELP tollgate_response_cache_evicted_total Entries dropped (LRU, TTL, size bounds).\n\
             # TYPE tollgate_response_cache_evicted_total counter\n\
             tollgate_response_cache_evicted_total {}\n\
             # HELP tollgate_response_cache_entries Entries held.\n\
             # TYPE tollgate_response_cache_entries gauge\n\
             tollgate_response_cache_entries {entries}\n\
             # HELP tollgate_response_cache_bytes Bytes charged to the cache (answers and index).\n\
             # TYPE tollgate_response_cache_bytes gauge\n\
             tollgate_response_cache_bytes {bytes}\n",
            load(&st.hits_exact),
            load(&st.hits_semantic),
            load(&st.misses),
            load(&st.stored),
            load(&st.evicted),
        );
    }

    /// Entries held and bytes charged.
    pub fn size(&self) -> (usize, usize) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (g.values.len(), g.exact.bytes())
    }

    /// The keys of `req` for tenant `scope` on `deployment`.
    pub fn keys(&self, req: &IngressRequest, scope: &str, deployment: &str) -> Keys {
        let api = req.api();
        let stream = req.stream();
        let exact = key(&KeyParts {
            scope,
            deployment,
            api,
            stream,
            body: req.body(),
        });
        let semantic = if self.semantic {
            req.semantic_split().map(|(rest, text)| {
                let context = key(&KeyParts {
                    scope,
                    deployment,
                    api,
                    stream,
                    body: &rest,
                });
                (ContextKey(context), self.embedder.embed(&text))
            })
        } else {
            None
        };
        Keys { exact, semantic }
    }

    /// A live entry for `keys`: exact first, then the most similar last turn in the same
    /// context at or above the threshold. `max_age_ms`: only entries younger than that.
    pub fn lookup(&self, keys: &Keys, max_age_ms: Option<u64>, now_ms: i64) -> Option<Found> {
        let now = now_ms.max(0) as u64;
        let fresh = |e: &Entry| {
            e.expires_ms > now_ms
                && max_age_ms.is_none_or(|m| now_ms.saturating_sub(e.created_ms) <= m as i64)
        };
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = g.exact.get(keys.exact, now)
            && let Some(e) = g.values.get(&id).cloned()
        {
            if fresh(&e) {
                self.stats.hits_exact.fetch_add(1, Ordering::Relaxed);
                return Some(Found::Exact(e));
            }
            if e.expires_ms <= now_ms {
                g.drop_values(vec![id], self.file.as_ref(), &self.stats);
            }
        }
        if let Some((ctx, emb)) = &keys.semantic
            && let Some(hit) = g.semantic.lookup(*ctx, emb, self.threshold, now)
            && let Some(e) = g.values.get(&hit.value).cloned()
        {
            if fresh(&e) {
                self.stats.hits_semantic.fetch_add(1, Ordering::Relaxed);
                return Some(Found::Semantic(e, hit.similarity));
            }
            if e.expires_ms <= now_ms {
                g.drop_values(vec![hit.value], self.file.as_ref(), &self.stats);
            }
        }
        let expired = g.exact.drain_expired();
        g.drop_values(expired, self.file.as_ref(), &self.stats);
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Store a complete answer under `keys`.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &self,
        keys: Keys,
        body: Bytes,
        content_type: String,
        stream: bool,
        usage: Usage,
        service_tier: Option<String>,
        deployment: &str,
        ttl_ms: u64,
        now_ms: i64,
    ) {
        if body.len() > self.max_entry_bytes {
            return;
        }
        let expires_ms = now_ms.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let id = g.next_id;
        g.next_id += 1;
        let entry = Arc::new(Entry {
            id,
            exact: keys.exact,
            context: keys.semantic.as_ref().map(|(c, _)| c.0),
            body,
            content_type,
            stream,
            usage,
            service_tier,
            deployment: deployment.to_string(),
            created_ms: now_ms,
            expires_ms,
        });
        if let Some(f) = &self.file {
            let stored = StoredEntry {
                id,
                exact: entry.exact,
                context: entry.context,
                embedding: keys.semantic.as_ref().map(|(_, e)| e.clone()),
                body: entry.body.to_vec(),
                content_type: entry.content_type.clone(),
                stream,
                usage: serde_json::to_string(&StoredUsage {
                    usage,
                    service_tier: entry.service_tier.clone(),
                })
                .unwrap_or_default(),
                deployment: entry.deployment.clone(),
                created_ms: now_ms,
                expires_ms,
            };
            f.put(stored);
        }
        let semantic = keys.semantic.map(|(c, e)| (c.0, e));
        self.index(&mut g, entry, semantic, now_ms);
        self.stats.stored.fetch_add(1, Ordering::Relaxed);
    }
}

/// The compiled-in model behind the `Embedder` trait object.
struct StaticRef(&'static static_model::StaticModel);

impl Embedder for StaticRef {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn dim(&self) -> usize {
        self.0.dim()
    }
    fn threshold(&self) -> f32 {
        self.0.threshold()
    }
    fn embed_into(&self, text: &str, out: &mut Vec<f32>) {
        self.0.embed_into(text, out)
    }
}

//! The response cache's file: entries persisted so a restart keeps them (SQLite, its
//! own file beside the ledger, WAL). The gateway keeps the indexes in memory and writes
//! here from one background thread (inserts and removals queued, batched per
//! transaction), so a request never waits on this file; at startup the live entries
//! are read back, newest last.

use crate::StoreError;
use rusqlite::{Connection, params};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// One stored answer.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntry {
    pub id: u64,
    pub exact: u128,
    pub context: Option<u128>,
    pub embedding: Option<Vec<f32>>,
    /// The bytes the client got (a JSON body, or a whole event stream).
    pub body: Vec<u8>,
    pub content_type: String,
    pub stream: bool,
    /// The answer's usage and service tier as the upstream reported them (JSON), to price
    /// what a hit avoids.
    pub usage: String,
    pub deployment: String,
    pub created_ms: i64,
    pub expires_ms: i64,
}

enum Op {
    Put(Box<StoredEntry>),
    Remove(Vec<u64>),
    Stop,
}

/// The file and its writer thread.
pub struct CacheFile {
    tx: mpsc::SyncSender<Op>,
    join: Option<JoinHandle<()>>,
    path: PathBuf,
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS response_cache (
        id INTEGER PRIMARY KEY,
        exact BLOB NOT NULL,
        context BLOB,
        embedding BLOB,
        body BLOB NOT NULL,
        content_type TEXT NOT NULL,
        stream INTEGER NOT NULL,
        usage TEXT NOT NULL,
        deployment TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS response_cache_expires ON response_cache (expires_ms);";

fn open(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open(path)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    c.busy_timeout(Duration::from_secs(5))?;
    c.execute_batch(SCHEMA)?;
    Ok(c)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn key_bytes(k: u128) -> [u8; 16] {
    k.to_le_bytes()
}

fn bytes_key(b: &[u8]) -> Option<u128> {
    <[u8; 16]>::try_from(b).ok().map(u128::from_le_bytes)
}

impl CacheFile {
    /// Open (or create) the file, read the entries still alive at `now_ms` (oldest
    /// first, at most `limit`), drop the expired ones, and start the writer.
    pub fn open(
        path: &Path,
        now_ms: i64,
        limit: usize,
    ) -> Result<(CacheFile, Vec<StoredEntry>), StoreError> {
        let conn = open(path)?;
        conn.execute(
            "DELETE FROM response_cache WHERE expires_ms <= ?1",
            params![now_ms],
        )?;
        let mut live = Vec::new();
        {
            let mut stmt = conn.prepare(
                "SELECT id, exact, context, embedding, body, content_type, stream, usage,
                        deployment, created_ms, expires_ms
                 FROM response_cache ORDER BY created_ms DESC, id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                let exact: Vec<u8> = r.get(1)?;
                let context: Option<Vec<u8>> = r.get(2)?;
                let emb: Option<Vec<u8>> = r.get(3)?;
                Ok((
                    r.get::<_, i64>(0)?,
                    exact,
                    context,
                    emb,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, bool>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, String>(8)?,
                    r.get::<_, i64>(9)?,
                    r.get::<_, i64>(10)?,
                ))
            })?;
            for row in rows {
                let (id, exact, context, emb, body, ct, stream, usage, dep, created, expires) =
                    row?;
                let Some(exact) = bytes_key(&exact) else {
                    continue;
                };
                live.push(StoredEntry {
                    id: id.max(0) as u64,
                    exact,
                    context: context.as_deref().and_then(bytes_key),
                    embedding: emb.as_deref().map(bytes_f32),
                    body,
                    content_type: ct,
                    stream,
                    usage,
                    deployment: dep,
                    created_ms: created,
                    expires_ms: expires,
                });
            }
        }
        live.reverse();
        let (tx, rx) = mpsc::sync_channel::<Op>(4096);
        let join = std::thread::Builder::new()
            .name("tollgate-cache-file".into())
            .spawn(move || writer(conn, rx))
            .map_err(|e| StoreError::Io {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        Ok((
            CacheFile {
                tx,
                join: Some(join),
                path: path.to_path_buf(),
            },
            live,
        ))
    }

    /// Queue an entry to persist. A full queue drops the write (the entry stays served
    /// from memory; only a restart would forget it).
    pub fn put(&self, e: StoredEntry) -> bool {
        self.tx.try_send(Op::Put(Box::new(e))).is_ok()
    }

    /// Queue removals (evicted, expired or replaced entries).
    pub fn remove(&self, ids: Vec<u64>) {
        if !ids.is_empty() {
            let _ = self.tx.try_send(Op::Remove(ids));
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write what is queued and stop the writer.
    pub fn close(&mut self) {
        let _ = self.tx.send(Op::Stop);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for CacheFile {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer(mut conn: Connection, rx: mpsc::Receiver<Op>) {
    loop {
        let Ok(first) = rx.recv() else { return };
        let mut ops = vec![first];
        while ops.len() < 512 {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let stop = ops.iter().any(|o| matches!(o, Op::Stop));
        if let Err(e) = write(&mut conn, &ops) {
            tracing::warn!(error = %e, "response cache file: write failed (entries stay in memory)");
        }
        if stop {
            return;
        }
    }
}

fn write(conn: &mut Connection, ops: &[Op]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut put = tx.prepare_cached(
            "INSERT OR REPLACE INTO response_cache (id, exact, context, embedding, body,
             content_type, stream, usage, deployment, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        let mut del = tx.prepare_cached("DELETE FROM response_cache WHERE id = ?1")?;
        for op in ops {
            match op {
                Op::Put(e) => {
                    put.execute(params![
                        i64::try_from(e.id).unwrap_or(i64::MAX),
                        key_bytes(e.exact).to_vec(),
                        e.context.map(|c| key_bytes(c).to_vec()),
                        e.embedding.as_deref().map(f32_bytes),
                        e.body,
                        e.content_type,
                        e.stream,
                        e.usage,
                        e.deployment,
                        e.created_ms,
                        e.expires_ms,
                    ])?;
                }
                Op::Remove(ids) => {
                    for id in ids {
                        del.execute(params![i64::try_from(*id).unwrap_or(i64::MAX)])?;
                    }
                }
                Op::Stop => {}
            }
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, expires_ms: i64) -> StoredEntry {
        StoredEntry {
            id,
            exact: u128::MAX - u128::from(id),
            context: id.is_multiple_of(2).then_some(7),
            embedding: id.is_multiple_of(2).then(|| vec![0.5, -0.25, 1.0]),
            body: format!("{{\"answer\":{id}}}").into_bytes(),
            content_type: "application/json".into(),
            stream: id == 3,
            usage: "{\"input\":10,\"output\":5}".into(),
            deployment: "d".into(),
            created_ms: 100 + id as i64,
            expires_ms,
        }
    }

    #[test]
    fn entries_survive_a_restart_until_they_expire_and_removals_stick() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("c.db");
        {
            let (f, live) = CacheFile::open(&path, 0, 100).unwrap();
            assert!(live.is_empty());
            for id in 1..=4 {
                assert!(f.put(entry(id, if id == 2 { 500 } else { 10_000 })));
            }
            f.remove(vec![4]);
        }
        let (_f, live) = CacheFile::open(&path, 1_000, 100).unwrap();
        let ids: Vec<u64> = live.iter().map(|e| e.id).collect();
        // 2 expired, 4 removed; oldest first.
        assert_eq!(ids, [1, 3]);
        assert_eq!(live[1], entry(3, 10_000));
        assert_eq!(live[0].embedding, None);
        let (_g, two) = CacheFile::open(&path, 1_000, 1).unwrap();
        assert_eq!(two.iter().map(|e| e.id).collect::<Vec<_>>(), [3]);
    }
}

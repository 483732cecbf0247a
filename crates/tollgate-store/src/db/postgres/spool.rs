//! The spool: where ledger rows wait, on the replica's own disk, while PostgreSQL cannot
//! take them.
//!
//! One append-only file of JSON lines (`{"replica_id", "replica_seq", "row"}`), written
//! by the ledger writer only (one writer per spool file). A batch is one `write_all`;
//! in strict mode it is fsynced before the batch's callers are answered. Shipping reads
//! from a byte offset, commits a chunk to PostgreSQL, then moves the offset on (kept in
//! `<spool>.offset`, rewritten by rename); once everything is shipped the file is
//! truncated. A crash between a commit and the offset write ships that chunk again,
//! which the ledger ignores (idempotent by request id; a row already there with the same
//! stream and number is not even a duplicate), so each row lands exactly once.
//!
//! A line torn by a crash mid-append (no newline at the end) is cut off when the spool is
//! opened: strict callers were only answered after the fsync, so it belonged to no
//! answered request. A complete line that does not parse is moved to
//! `<spool>.rejected` (never silently dropped) and skipped.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use tollgate_domain::ledger::LedgerRow;

/// One spooled row with its writer stream and number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spooled {
    pub replica_id: String,
    pub replica_seq: i64,
    pub row: LedgerRow,
}

#[derive(Serialize)]
struct SpooledRef<'a> {
    replica_id: &'a str,
    replica_seq: i64,
    row: &'a LedgerRow,
}

/// The spool file and how far it was shipped.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    file: File,
    len: u64,
    offset: u64,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

impl Spool {
    /// Open (creating) the spool at `path`, cutting a torn last line off.
    pub fn open(path: &Path) -> io::Result<Spool> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let mut len = file.metadata()?.len();
        let whole = end_of_last_line(&mut file, len)?;
        if whole < len {
            tracing::warn!(path = %path.display(), bytes = len - whole, "spool: cutting off a torn last line");
            file.set_len(whole)?;
            file.sync_all()?;
            len = whole;
        }
        let offset = std::fs::read_to_string(with_suffix(path, ".offset"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|&o| o <= len)
            .unwrap_or(0);
        Ok(Spool {
            path: path.to_path_buf(),
            file,
            len,
            offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows wait to be shipped.
    pub fn pending(&self) -> bool {
        self.offset < self.len
    }

    /// Bytes not shipped yet.
    pub fn backlog_bytes(&self) -> u64 {
        self.len - self.offset
    }

    /// Append rows (one write); `sync`: fsync before returning.
    pub fn append<'a>(
        &mut self,
        rows: impl Iterator<Item = (&'a LedgerRow, &'a str, i64)>,
        sync: bool,
    ) -> io::Result<usize> {
        let mut buf = Vec::with_capacity(4096);
        let mut n = 0;
        for (row, replica_id, replica_seq) in rows {
            serde_json::to_writer(
                &mut buf,
                &SpooledRef {
                    replica_id,
                    replica_seq,
                    row,
                },
            )
            .map_err(io::Error::other)?;
            buf.push(b'\n');
            n += 1;
        }
        if let Err(e) = self.file.write_all(&buf) {
            // A partial write leaves a torn line: cut it so the next append starts clean.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        if sync {
            self.file.sync_data()?;
        }
        self.len += buf.len() as u64;
        Ok(n)
    }

    /// Up to `max` rows from the shipped offset, and the offset after them.
    pub fn read(&self, max: usize) -> io::Result<(Vec<Spooled>, u64)> {
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        let mut r = BufReader::new(f.take(self.len - self.offset));
        let mut out = Vec::new();
        let mut at = self.offset;
        let mut line = String::new();
        while out.len() < max {
            line.clear();
            let n = r.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            at += n as u64;
            match serde_json::from_str::<Spooled>(line.trim_end()) {
                Ok(s) => out.push(s),
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "spool: a line does not parse; moved to the .rejected file");
                    let mut rej = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(with_suffix(&self.path, ".rejected"))?;
                    rej.write_all(line.as_bytes())?;
                    rej.sync_data()?;
                }
            }
        }
        Ok((out, at))
    }

    /// Everything before `to` is in PostgreSQL. Truncates the file once all of it is.
    pub fn shipped(&mut self, to: u64) -> io::Result<()> {
        self.offset = to.min(self.len);
        let offset_path = with_suffix(&self.path, ".offset");
        if self.offset == self.len {
            self.file.set_len(0)?;
            self.file.sync_all()?;
            self.len = 0;
            self.offset = 0;
            match std::fs::remove_file(&offset_path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            }
        } else {
            let tmp = with_suffix(&self.path, ".offset.tmp");
            std::fs::write(&tmp, self.offset.to_string())?;
            std::fs::rename(tmp, offset_path)
        }
    }
}

/// The length of the file up to and including its last newline.
fn end_of_last_line(f: &mut File, len: u64) -> io::Result<u64> {
    const BLOCK: u64 = 64 * 1024;
    let mut end = len;
    let mut buf = vec![0u8; BLOCK as usize];
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::tests::row;

    #[test]
    fn appends_reads_in_chunks_and_truncates_once_shipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s/ledger.spool");
        let mut s = Spool::open(&p).unwrap();
        assert!(!s.pending());
        let rows: Vec<_> = (0..5).map(row).collect();
        s.append(
            rows.iter()
                .enumerate()
                .map(|(i, r)| (r, "a-1", i as i64 + 1)),
            true,
        )
        .unwrap();
        assert!(s.pending());
        let (first, at) = s.read(3).unwrap();
        assert_eq!(first.len(), 3);
        assert_eq!((first[2].replica_seq, &first[2].row), (3, &rows[2]));
        s.shipped(at).unwrap();
        // Reopened (a restart): carries on from the recorded offset.
        drop(s);
        let mut s = Spool::open(&p).unwrap();
        let (rest, end) = s.read(10).unwrap();
        assert_eq!(
            rest.iter().map(|r| r.replica_seq).collect::<Vec<_>>(),
            [4, 5]
        );
        s.shipped(end).unwrap();
        assert!(!s.pending());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        assert!(!with_suffix(&p, ".offset").exists());
    }

    #[test]
    fn a_torn_line_is_cut_and_a_bad_line_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ledger.spool");
        let mut s = Spool::open(&p).unwrap();
        s.append(std::iter::once((&row(1), "a", 1)), false).unwrap();
        drop(s);
        // A complete line that is not a row, then half a line (a crash mid-write).
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"not\": \"a row\"}\n{\"replica_id\": \"a\", \"repl")
            .unwrap();
        drop(f);
        let mut s = Spool::open(&p).unwrap();
        s.append(std::iter::once((&row(2), "a", 2)), false).unwrap();
        let (rows, end) = s.read(10).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.replica_seq).collect::<Vec<_>>(),
            [1, 2]
        );
        s.shipped(end).unwrap();
        let rejected = std::fs::read_to_string(with_suffix(&p, ".rejected")).unwrap();
        assert_eq!(rejected, "{\"not\": \"a row\"}\n");
    }
}

//! Partition-scoped key-value state stores: RocksDB holding only committed data, an in-memory
//! overlay holding the open transaction's writes, and a compacted changelog topic as the source of
//! truth.
//!
//! Layout in RocksDB (one DB per store, one column family, WAL off):
//! `[partition u32 BE][0x01][user key]` → value, and `[partition u32 BE][0x00]` → the next changelog
//! offset to restore from (i64 BE). Data and offset live in the same column family and are written in
//! one `WriteBatch`, so every flush is atomic and the DB is always a consistent, possibly stale,
//! prefix of the changelog. Restore replays the changelog from the stored offset; re-applying an
//! upsert or tombstone is idempotent, so a stale offset only costs time.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

/// Errors from a state store. RocksDB failures are not recoverable by retrying the record.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("RocksDB error in store `{store}` at {path}: {source} (check disk space and permissions of the state directory)")]
    Rocks {
        store: String,
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("store `{store}` partition {partition}: stored changelog offset is corrupt ({len} bytes); delete the state directory to force a full restore")]
    CorruptOffset {
        store: String,
        partition: i32,
        len: usize,
    },
}

const TAG_OFFSET: u8 = 0x00;
const TAG_DATA: u8 = 0x01;

fn partition_prefix(partition: i32) -> [u8; 4] {
    // Partitions are never negative; the cast keeps byte order sortable.
    (partition as u32).to_be_bytes()
}

fn data_key(partition: i32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + key.len());
    k.extend_from_slice(&partition_prefix(partition));
    k.push(TAG_DATA);
    k.extend_from_slice(key);
    k
}

fn offset_key(partition: i32) -> [u8; 5] {
    let p = partition_prefix(partition);
    [p[0], p[1], p[2], p[3], TAG_OFFSET]
}

/// A dirty entry: `None` is a delete (a tombstone in the changelog).
pub type OverlayValue = Option<Vec<u8>>;

/// A key and its value, as scans return them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One named store, holding every partition this stream thread owns.
pub struct StateStore {
    name: String,
    changelog_topic: String,
    path: PathBuf,
    db: DB,
    /// Writes of the open transaction, per partition. BTreeMap so later range reads can merge it
    /// with a RocksDB iterator in key order.
    overlay: HashMap<i32, BTreeMap<Vec<u8>, OverlayValue>>,
    overlay_bytes: usize,
    /// `Some` when an output topic logs the store (`StoreLog::Output`): then `changelog_topic` is
    /// that topic, no changelog records are written, and a restore reads the entries from the
    /// records' headers. The inner value bounds a restore without local state to the last
    /// milliseconds given.
    output_log: Option<Option<i64>>,
}

/// The header that carries a store's entry on an output record that logs it.
pub fn log_header(store: &str) -> String {
    format!("corral.store.{store}")
}

/// A logged entry as a header value: the key's length (u32 BE), the key, the value.
pub fn encode_logged(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + key.len() + value.len());
    v.extend_from_slice(&(key.len() as u32).to_be_bytes());
    v.extend_from_slice(key);
    v.extend_from_slice(value);
    v
}

/// The entry of a header value written by [`encode_logged`]; `None` if it is malformed.
pub fn decode_logged(v: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(v.get(..4)?.try_into().ok()?) as usize;
    let rest = v.get(4..)?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

impl StateStore {
    /// Opens (or creates) the store's RocksDB under `dir`.
    pub fn open(name: &str, changelog_topic: &str, dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(name);
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        // Kafka Streams' defaults for state stores, sized down: the changelog is the durable copy.
        opts.set_write_buffer_size(16 * 1024 * 1024);
        opts.set_max_write_buffer_number(3);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // A Bloom filter per table, as Kafka Streams configures its stores: most reads of the
        // hot path are misses (a new messageId, a new identifier, a new profile), which the
        // filter answers without reading index and data blocks.
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        let db = DB::open(&opts, &path).map_err(|source| StoreError::Rocks {
            store: name.to_string(),
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            name: name.to_string(),
            changelog_topic: changelog_topic.to_string(),
            path,
            db,
            overlay: HashMap::new(),
            overlay_bytes: 0,
            output_log: None,
        })
    }

    /// Marks the store as logged by its output topic (the `changelog_topic` it was opened with).
    pub fn logged_by_output(mut self, restore_window_ms: Option<i64>) -> Self {
        self.output_log = Some(restore_window_ms);
        self
    }

    /// Whether commits write the store's dirty keys to a changelog of its own.
    pub fn writes_changelog(&self) -> bool {
        self.output_log.is_none()
    }

    /// For a store logged by an output topic: how far back a restore without local state reads.
    pub fn output_restore_window_ms(&self) -> Option<Option<i64>> {
        self.output_log
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn changelog_topic(&self) -> &str {
        &self.changelog_topic
    }

    fn rocks(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks {
            store: self.name.clone(),
            path: self.path.clone(),
            source,
        }
    }

    /// Reads through the overlay to committed data.
    pub fn get(&self, partition: i32, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.overlay.get(&partition).and_then(|o| o.get(key)) {
            return Ok(v.clone());
        }
        self.get_committed(partition, key)
    }

    /// Reads committed data only (what RocksDB holds), bypassing the overlay.
    pub fn get_committed(&self, partition: i32, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_pinned(data_key(partition, key))
            .map(|v| v.map(|s| s.to_vec()))
            .map_err(|e| self.rocks(e))
    }

    /// Buffers a write in the open transaction.
    pub fn put(&mut self, partition: i32, key: Vec<u8>, value: OverlayValue) {
        self.overlay_bytes += key.len() + value.as_ref().map_or(0, Vec::len);
        self.overlay
            .entry(partition)
            .or_default()
            .insert(key, value);
    }

    /// Bytes written into the overlay since the last commit (an upper bound).
    pub fn overlay_bytes(&self) -> usize {
        self.overlay_bytes
    }

    /// The dirty entries of the open transaction, one per key: these become changelog records.
    pub fn dirty(&self) -> impl Iterator<Item = (i32, &[u8], Option<&[u8]>)> {
        self.overlay.iter().flat_map(|(p, entries)| {
            entries
                .iter()
                .map(move |(k, v)| (*p, k.as_slice(), v.as_deref()))
        })
    }

    /// Drops the open transaction's writes (after an abort or on revoke).
    pub fn discard_overlay(&mut self) {
        self.overlay.clear();
        self.overlay_bytes = 0;
    }

    /// Drops one partition's open writes.
    pub fn discard_partition(&mut self, partition: i32) {
        self.overlay.remove(&partition);
    }

    /// After the transaction committed: writes the overlay and the next changelog offsets to RocksDB
    /// in one batch. `next_offsets` maps partition → offset after the last changelog record of the
    /// committed transaction.
    pub fn apply_committed(&mut self, next_offsets: &HashMap<i32, i64>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (partition, entries) in std::mem::take(&mut self.overlay) {
            for (k, v) in entries {
                let key = data_key(partition, &k);
                match v {
                    Some(v) => batch.put(key, v),
                    None => batch.delete(key),
                }
            }
        }
        for (partition, next) in next_offsets {
            batch.put(offset_key(*partition), next.to_be_bytes());
        }
        self.overlay_bytes = 0;
        self.write(batch)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        // The changelog is the durable copy; see the module docs for why this is safe.
        opts.disable_wal(true);
        self.db.write_opt(batch, &opts).map_err(|e| self.rocks(e))
    }

    /// The next changelog offset to restore from, if this partition was ever restored or written.
    pub fn stored_offset(&self, partition: i32) -> Result<Option<i64>, StoreError> {
        let raw = self
            .db
            .get_pinned(offset_key(partition))
            .map_err(|e| self.rocks(e))?;
        match raw {
            None => Ok(None),
            Some(bytes) => {
                let arr: [u8; 8] =
                    bytes
                        .as_ref()
                        .try_into()
                        .map_err(|_| StoreError::CorruptOffset {
                            store: self.name.clone(),
                            partition,
                            len: bytes.len(),
                        })?;
                Ok(Some(i64::from_be_bytes(arr)))
            }
        }
    }

    /// Applies a batch of changelog records read during restore, with the offset to resume from.
    pub fn apply_restored(
        &self,
        partition: i32,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
        next_offset: i64,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (k, v) in records {
            let key = data_key(partition, k);
            match v {
                Some(v) => batch.put(key, v),
                None => batch.delete(key),
            }
        }
        batch.put(offset_key(partition), next_offset.to_be_bytes());
        self.write(batch)
    }

    /// All committed entries of a partition in key order (tests and tools; not for the hot path).
    pub fn committed_entries(&self, partition: i32) -> Result<Vec<Entry>, StoreError> {
        self.committed_prefix(partition, &[])
    }

    /// Committed entries of a partition whose key starts with `prefix`, in key order.
    fn committed_prefix(&self, partition: i32, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let mut start = partition_prefix(partition).to_vec();
        start.push(TAG_DATA);
        let user_start = start.len();
        start.extend_from_slice(prefix);
        let mut out = Vec::new();
        let iter = self
            .db
            .iterator(IteratorMode::From(&start, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            if !k.starts_with(&start) {
                break;
            }
            out.push((k[user_start..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Entries of a partition whose key starts with `prefix`, in key order, with the open
    /// transaction's writes (and deletes) applied over committed data.
    pub fn scan_prefix(&self, partition: i32, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let committed = self.committed_prefix(partition, prefix)?;
        let Some(overlay) = self.overlay.get(&partition) else {
            return Ok(committed);
        };
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = committed.into_iter().collect();
        for (k, v) in overlay.range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().collect())
    }

    /// Flushes memtables to disk (clean shutdown), so a restart restores only what came after.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.rocks(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_entries_round_trip_and_malformed_ones_are_refused() {
        let v = encode_logged(b"key", b"\x00value");
        assert_eq!(decode_logged(&v), Some((&b"key"[..], &b"\x00value"[..])));
        assert_eq!(
            decode_logged(&encode_logged(b"", b"")),
            Some((&b""[..], &b""[..]))
        );
        assert_eq!(decode_logged(b"\x00\x00"), None, "too short for a length");
        assert_eq!(
            decode_logged(b"\x00\x00\x00\x09key"),
            None,
            "a key longer than the header"
        );
        assert_eq!(log_header("message-ids"), "corral.store.message-ids");
    }

    #[test]
    fn overlay_reads_through_and_commits_atomically_with_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open("counts", "app.counts-changelog", dir.path()).unwrap();
        store.put(3, b"a".to_vec(), Some(b"1".to_vec()));
        assert_eq!(store.get(3, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(
            store.get_committed(3, b"a").unwrap(),
            None,
            "overlay must not reach RocksDB before commit"
        );
        assert_eq!(store.get(4, b"a").unwrap(), None, "partitions are isolated");
        assert_eq!(store.dirty().count(), 1);

        store.apply_committed(&HashMap::from([(3, 17)])).unwrap();
        assert_eq!(store.get_committed(3, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.stored_offset(3).unwrap(), Some(17));
        assert_eq!(store.stored_offset(4).unwrap(), None);
        assert_eq!(store.dirty().count(), 0);

        store.put(3, b"a".to_vec(), None);
        store.discard_overlay();
        assert_eq!(
            store.get(3, b"a").unwrap(),
            Some(b"1".to_vec()),
            "aborted delete is dropped"
        );

        store.put(3, b"a".to_vec(), None);
        store.apply_committed(&HashMap::new()).unwrap();
        assert_eq!(store.get(3, b"a").unwrap(), None);
        assert_eq!(
            store.stored_offset(3).unwrap(),
            Some(17),
            "offset kept when no changelog record was written"
        );
    }

    #[test]
    fn prefix_scans_merge_the_overlay_over_committed_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open("s", "t", dir.path()).unwrap();
        for (k, v) in [("p/a", "1"), ("p/b", "2"), ("p/c", "3"), ("q/a", "9")] {
            store.put(0, k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()));
        }
        store.put(1, b"p/z".to_vec(), Some(b"other partition".to_vec()));
        store.apply_committed(&HashMap::new()).unwrap();
        store.put(0, b"p/b".to_vec(), None);
        store.put(0, b"p/c".to_vec(), Some(b"30".to_vec()));
        store.put(0, b"p/d".to_vec(), Some(b"4".to_vec()));
        store.put(0, b"r/a".to_vec(), Some(b"x".to_vec()));
        let got: Vec<(String, String)> = store
            .scan_prefix(0, b"p/")
            .unwrap()
            .into_iter()
            .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
            .collect();
        let want = [("p/a", "1"), ("p/c", "30"), ("p/d", "4")]
            .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(got, want.to_vec());
        assert_eq!(
            store.scan_prefix(0, b"").unwrap().len(),
            5,
            "an empty prefix scans the partition"
        );
        assert_eq!(store.scan_prefix(1, b"p/").unwrap().len(), 1);
        assert!(store.scan_prefix(2, b"p/").unwrap().is_empty());
    }

    #[test]
    fn restored_batches_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open("s", "t", dir.path()).unwrap();
        let recs = vec![
            (b"k1".to_vec(), Some(b"v1".to_vec())),
            (b"k2".to_vec(), Some(b"v2".to_vec())),
            (b"k1".to_vec(), None),
        ];
        store.apply_restored(0, &recs, 3).unwrap();
        store.apply_restored(0, &recs, 3).unwrap();
        assert_eq!(
            store.committed_entries(0).unwrap(),
            vec![(b"k2".to_vec(), b"v2".to_vec())]
        );
        assert_eq!(store.stored_offset(0).unwrap(), Some(3));
    }

    #[test]
    fn reopening_keeps_flushed_data() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = StateStore::open("s", "t", dir.path()).unwrap();
            store.put(1, b"k".to_vec(), Some(b"v".to_vec()));
            store.apply_committed(&HashMap::from([(1, 5)])).unwrap();
            store.flush().unwrap();
        }
        let store = StateStore::open("s", "t", dir.path()).unwrap();
        assert_eq!(store.get(1, b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(store.stored_offset(1).unwrap(), Some(5));
    }
}

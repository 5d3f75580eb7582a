//! Augmented batches built one step ahead. Random crops of FGVC's images take the host tens
//! of milliseconds per batch; built on the training thread, a GPU would wait for them every
//! step. A worker thread builds the next batch while the current step runs. Every batch is a
//! pure function of (seed, epoch, indices), so the bytes are the same either way; a batch
//! asked for out of turn (a resume, a stop) is built on the spot.

use mlae_data::AugmentedSet;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Which batch: (epoch, image indices).
type Key = (u64, Vec<usize>);

pub(super) struct Prefetcher {
    set: Arc<AugmentedSet>,
    seed: u64,
    requests: Option<SyncSender<Key>>,
    results: Receiver<(Key, Vec<u8>)>,
    pending: Option<Key>,
    worker: Option<JoinHandle<()>>,
}

impl Prefetcher {
    pub(super) fn new(set: Arc<AugmentedSet>, seed: u64) -> Self {
        let (req_tx, req_rx) = sync_channel::<Key>(1);
        let (res_tx, res_rx) = sync_channel::<(Key, Vec<u8>)>(1);
        let worker_set = Arc::clone(&set);
        let worker = std::thread::Builder::new()
            .name("mlae-prefetch".into())
            .spawn(move || {
                for key in req_rx {
                    let buf = fill(&worker_set, seed, &key);
                    if res_tx.send((key, buf)).is_err() {
                        break;
                    }
                }
            })
            .expect("the prefetch thread starts");
        Self { set, seed, requests: Some(req_tx), results: res_rx, pending: None, worker: Some(worker) }
    }

    /// Starts building batch `idx` of `epoch` in the background (a request already in flight
    /// is collected and dropped first).
    pub(super) fn request(&mut self, epoch: u64, idx: &[usize]) {
        self.drain();
        let key = (epoch, idx.to_vec());
        if let Some(tx) = &self.requests
            && tx.send(key.clone()).is_ok()
        {
            self.pending = Some(key);
        }
    }

    /// The NHWC bytes of batch `idx` of `epoch`: the prefetched ones when they were requested,
    /// else built now.
    pub(super) fn take(&mut self, epoch: u64, idx: &[usize]) -> Vec<u8> {
        if self.pending.as_ref().is_some_and(|(e, i)| *e == epoch && i == idx) {
            self.pending = None;
            if let Ok((_, buf)) = self.results.recv() {
                return buf;
            }
        }
        self.drain();
        fill(&self.set, self.seed, &(epoch, idx.to_vec()))
    }

    /// Collects a request in flight that nobody will take.
    fn drain(&mut self) {
        if self.pending.take().is_some() {
            let _ = self.results.recv();
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.drain();
        // Closing the request channel ends the worker's loop.
        self.requests = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn fill(set: &AugmentedSet, seed: u64, (epoch, idx): &Key) -> Vec<u8> {
    let mut buf = vec![0u8; idx.len() * set.size() * set.size() * 3];
    set.fill_batch(idx, *epoch, seed, &mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlae_data::{Benchmark, DataSource, Transform, open_task};

    /// A list task of 6 PNGs of different sizes, as an augmented set of 8 px crops.
    fn set() -> (tempfile::TempDir, AugmentedSet) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t");
        std::fs::create_dir_all(&dir).unwrap();
        let mut list = String::new();
        for i in 0..6u32 {
            let img = image::RgbImage::from_fn(12 + i, 10 + 2 * i, |x, y| {
                image::Rgb([(x * 20) as u8, (y * 20) as u8, (i * 40) as u8])
            });
            img.save(dir.join(format!("{i}.png"))).unwrap();
            list.push_str(&format!("{i}.png {}\n", i % 2));
        }
        std::fs::write(dir.join("train.txt"), list).unwrap();
        let src =
            DataSource { benchmark: Benchmark::List, task: "t".into(), root: tmp.path().into(), split: None };
        let split = open_task(&src).unwrap().split("train").unwrap();
        let set = AugmentedSet::new(&split, &Transform::fgvc_train(8), 2, None).unwrap();
        (tmp, set)
    }

    #[test]
    fn prefetched_batches_are_the_batches_built_in_place() {
        let (_tmp, set) = set();
        let set = Arc::new(set);
        let direct = |epoch: u64, idx: &[usize]| fill(&set, 7, &(epoch, idx.to_vec()));
        let mut p = Prefetcher::new(Arc::clone(&set), 7);
        // in turn: each batch asked for after it was requested
        p.request(0, &[0, 1]);
        assert_eq!(p.take(0, &[0, 1]), direct(0, &[0, 1]));
        p.request(0, &[2, 3]);
        // out of turn (a resume, another epoch): built on the spot, the request dropped
        assert_eq!(p.take(1, &[5, 4]), direct(1, &[5, 4]));
        assert_eq!(p.take(0, &[2, 3]), direct(0, &[2, 3]));
        assert_ne!(direct(0, &[0, 1]), direct(1, &[0, 1]), "the epoch changes the crops");
        p.request(2, &[1]);
        drop(p); // a request in flight does not hang the drop
    }
}

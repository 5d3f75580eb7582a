//! The one buffer behind [`super::AdamW`]: every parameter, gradient and moment of the optimizer
//! in a single f32 allocation, so an update, a clipping scale or a finite check is a few
//! kernels over a range instead of several per tensor.
//!
//! Layout: four regions of `len` elements each (parameters, gradients, first moments, second
//! moments); a parameter has the same slot in each. Slots are ordered by group and then by size,
//! so a group is one range (one update for all its tensors) and equal-sized tensors sit side by
//! side (one norm kernel for all of them, see [`Flat::block`]).

use tch::{Device, Kind, Tensor};

/// Every slot starts at a multiple of this many elements (256 bytes, as a fresh CUDA allocation
/// does), so the views keep the alignment that vectorised kernels and cuBLAS prefer. The padding
/// stays zero through every update (AdamW maps zeros to zeros), so it never shows in a check.
const ALIGN: i64 = 64;

/// The regions of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Region {
    Param = 0,
    Grad = 1,
    ExpAvg = 2,
    ExpAvgSq = 3,
}

impl Region {
    pub(super) const ALL: [Region; 4] = [Region::Param, Region::Grad, Region::ExpAvg, Region::ExpAvgSq];
}

/// Where one parameter lives in each region: `[offset, offset + numel)`, its slot (with the
/// padding) ending at `offset + padded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub offset: i64,
    pub numel: i64,
    pub padded: i64,
}

/// A maximal run of adjacent slots (in buffer order) that share a key: one contiguous range
/// of every region, `[start, end)`, padding included.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Run<K> {
    pub key: K,
    pub start: i64,
    pub end: i64,
    /// The parameters of the run (indices in the optimizer's order), in buffer order.
    pub members: Vec<usize>,
}

/// The buffer and the slot of each parameter.
pub(super) struct Flat {
    /// `4 * len` f32 elements: the four regions one after the other.
    buf: Tensor,
    len: i64,
    /// By parameter index (the optimizer's order).
    slots: Vec<Slot>,
    /// Parameter indices in buffer order.
    order: Vec<usize>,
}

impl Flat {
    /// A zeroed buffer for tensors of `numels`, whose slots are ordered by (`groups[i]`,
    /// `numels[i]`), ties in the given order.
    pub(super) fn new(numels: &[i64], groups: &[usize], device: Device) -> Self {
        let mut order: Vec<usize> = (0..numels.len()).collect();
        order.sort_by_key(|&i| (groups[i], numels[i]));
        let mut slots = vec![Slot { offset: 0, numel: 0, padded: 0 }; numels.len()];
        let mut len = 0;
        for &i in &order {
            let padded = (numels[i] as u64).next_multiple_of(ALIGN as u64) as i64;
            slots[i] = Slot { offset: len, numel: numels[i], padded };
            len += padded;
        }
        let buf = Tensor::zeros([4 * len], (Kind::Float, device));
        Flat { buf, len, slots, order }
    }

    pub(super) fn slot(&self, param: usize) -> Slot {
        self.slots[param]
    }

    /// The view of parameter `param` in `region`, shaped `shape`.
    pub(super) fn view(&self, region: Region, param: usize, shape: &[i64]) -> Tensor {
        let s = self.slots[param];
        self.buf.narrow(0, region as i64 * self.len + s.offset, s.numel).view(shape)
    }

    /// `[start, end)` of `region`.
    pub(super) fn range(&self, region: Region, start: i64, end: i64) -> Tensor {
        self.buf.narrow(0, region as i64 * self.len + start, end - start)
    }

    /// All of `region`.
    pub(super) fn region(&self, region: Region) -> Tensor {
        self.range(region, 0, self.len)
    }

    /// The whole buffer (every region).
    pub(super) fn all(&self) -> &Tensor {
        &self.buf
    }

    /// Whether `[start, end)` covers every slot.
    pub(super) fn covers_all(&self, start: i64, end: i64) -> bool {
        start == 0 && end == self.len
    }

    /// `count` equal-sized slots of `region` from parameter `first` on, as the rows of a
    /// `(count, numel)` view (row stride: the padded size). Its row norms are bit for bit the
    /// norms of the tensors one by one: each row is reduced alone, as a tensor is.
    pub(super) fn block(&self, region: Region, first: usize, count: i64) -> Tensor {
        let s = self.slots[first];
        self.buf.as_strided([count, s.numel], [s.padded, 1], Some(region as i64 * self.len + s.offset))
    }

    /// The maximal runs of adjacent slots whose `key` is `Some` and equal, in buffer order; a
    /// parameter whose key is `None` ends a run.
    pub(super) fn runs<K: PartialEq>(&self, key: impl Fn(usize) -> Option<K>) -> Vec<Run<K>> {
        let mut runs: Vec<Run<K>> = Vec::new();
        let mut open = false;
        for &i in &self.order {
            let Some(k) = key(i) else {
                open = false;
                continue;
            };
            let s = self.slots[i];
            match runs.last_mut() {
                Some(run) if open && run.key == k => {
                    run.end = s.offset + s.padded;
                    run.members.push(i);
                }
                _ => runs.push(Run { key: k, start: s.offset, end: s.offset + s.padded, members: vec![i] }),
            }
            open = true;
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_aligned_grouped_and_sorted_by_size() {
        let flat = Flat::new(&[10, 3, 100, 3], &[1, 0, 1, 1], Device::Cpu);
        // buffer order: 1 (group 0), then group 1 by size: 3 (3), 0 (10), 2 (100)
        let offsets: Vec<i64> = (0..4).map(|i| flat.slot(i).offset).collect();
        assert_eq!(offsets, [128, 0, 192, 64]);
        assert_eq!(flat.slot(2).padded, 128);
        assert_eq!(flat.all().size(), [4 * 320]);
        let runs = flat.runs(|i| (i != 0).then_some(()));
        let spans: Vec<(i64, i64, Vec<usize>)> =
            runs.into_iter().map(|r| (r.start, r.end, r.members)).collect();
        assert_eq!(spans, [(0, 128, vec![1, 3]), (192, 320, vec![2])]);
    }
}

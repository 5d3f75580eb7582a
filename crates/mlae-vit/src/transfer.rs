//! Every copy between the host and the device that a forward or a training step makes goes
//! through here, and is counted. Why: on CUDA a host read waits for the whole queue and a
//! blocking upload stalls the stream, so a step should make exactly one read (its loss,
//! accuracy and finite flag together) and no per-layer upload. Tests assert the counts on
//! the CPU, where the same code runs (see `mlae_train::step`).

use std::cell::Cell;
use tch::{Device, Kind, Tensor};

thread_local! {
    /// Per thread, so that tests running side by side count only their own traffic.
    static COUNTS: Cell<Transfers> = const { Cell::new(Transfers { reads: 0, uploads: 0 }) };
}

/// Host-device traffic counted so far on this thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transfers {
    /// Reads of device values on the host (each one waits for the device).
    pub reads: u64,
    /// Copies of host values to the device.
    pub uploads: u64,
}

impl Transfers {
    /// The counts now.
    pub fn now() -> Self {
        COUNTS.with(Cell::get)
    }

    /// The traffic since `earlier`.
    pub fn since(self, earlier: Transfers) -> Transfers {
        Transfers { reads: self.reads - earlier.reads, uploads: self.uploads - earlier.uploads }
    }
}

/// `values` as a 1-d f32 tensor on `device`: one upload.
pub fn upload_f32(values: &[f32], device: Device) -> Tensor {
    COUNTS.with(|c| c.set(Transfers { uploads: c.get().uploads + 1, ..c.get() }));
    Tensor::from_slice(values).to_device(device)
}

/// `bytes` (uint8, row-major `shape`) on `device`: one upload (images).
pub fn upload_u8(bytes: &[u8], shape: &[i64], device: Device) -> Tensor {
    COUNTS.with(|c| c.set(Transfers { uploads: c.get().uploads + 1, ..c.get() }));
    Tensor::from_data_size(bytes, shape, Kind::Uint8).to_device(device)
}

/// `values` as a 1-d i64 tensor on `device`: one upload (labels, indices).
pub fn upload_i64(values: &[i64], device: Device) -> Tensor {
    COUNTS.with(|c| c.set(Transfers { uploads: c.get().uploads + 1, ..c.get() }));
    Tensor::from_slice(values).to_device(device)
}

/// The values of `t` (any shape, any numeric kind) as f64 on the host: one read.
pub fn read_f64(t: &Tensor) -> Vec<f64> {
    COUNTS.with(|c| c.set(Transfers { reads: c.get().reads + 1, ..c.get() }));
    let flat = t.detach().to_kind(Kind::Double).to_device(Device::Cpu).contiguous().view(-1);
    Vec::<f64>::try_from(&flat).unwrap_or_default()
}

//! Memory-mapped source files, registered while mapped, so that the exporter can copy tensor
//! bytes that are unchanged ranges of an input file with `copy_file_range` (in the kernel: no
//! page faults on the map, no copy through user space) instead of writing them from memory.

use std::fs::File;
use std::sync::{Arc, Mutex};

/// A mapped input file; registered on creation, deregistered when the last `Bytes` slicing it
/// is dropped (so a registered address range always belongs to a live map).
pub struct Mapped {
    map: memmap2::Mmap,
    file: Arc<File>,
}

struct Entry {
    start: usize,
    len: usize,
    file: Arc<File>,
}

static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

impl Mapped {
    /// Wrap and register a map of `file`.
    pub fn new(map: memmap2::Mmap, file: File) -> Mapped {
        let file = Arc::new(file);
        if let Ok(mut r) = REGISTRY.lock() {
            r.push(Entry {
                start: map.as_ptr() as usize,
                len: map.len(),
                file: file.clone(),
            });
        }
        Mapped { map, file }
    }
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        let start = self.map.as_ptr() as usize;
        if let Ok(mut r) = REGISTRY.lock() {
            r.retain(|e| !(e.start == start && Arc::ptr_eq(&e.file, &self.file)));
        }
    }
}

/// The source file and offset of `bytes` if it lies inside a registered map.
pub fn locate(bytes: &[u8]) -> Option<(Arc<File>, u64)> {
    let p = bytes.as_ptr() as usize;
    let r = REGISTRY.lock().ok()?;
    r.iter()
        .find(|e| p >= e.start && p + bytes.len() <= e.start + e.len)
        .map(|e| (e.file.clone(), (p - e.start) as u64))
}

/// Copy `len` bytes at `offset` of `src` to the current position of `dst` in the kernel.
/// Returns false (having copied nothing) when the kernel cannot do it, so the caller falls
/// back to an ordinary write.
#[cfg(target_os = "linux")]
pub fn copy_range(src: &File, offset: u64, dst: &File, len: usize) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut off_in = offset as libc::loff_t;
    let mut left = len;
    while left > 0 {
        // SAFETY: valid open descriptors; `off_in` is a valid pointer; a null `off_out` means
        // the destination's file position is used and advanced, as for write(2).
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                left,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if left == len
                && matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)
                )
            {
                return Ok(false);
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "copy_file_range: source too short",
            ));
        }
        left -= n as usize;
    }
    Ok(true)
}

/// Copying in the kernel is Linux-only; elsewhere the caller writes.
#[cfg(not(target_os = "linux"))]
pub fn copy_range(_: &File, _: u64, _: &File, _: usize) -> std::io::Result<bool> {
    Ok(false)
}

//! Direct I/O (`O_DIRECT`) for the filesystem backend's content: the bytes of a file of
//! [`DIRECT_MIN`] bytes or more go between a buffer of this process and the disk, with no copy
//! in the page cache.
//!
//! Why: the page cache's share of each byte (allocating and filling pages, then writing them
//! back) cost a receiving server more CPU than anything but MD5. In the folder benchmark
//! (`hearth-bench folder`, 1,000 files, 1 GB) the receiving server used 5.9–6.8 s of CPU with
//! buffered writes and 4.1 s with direct ones, and on a virtual machine whose freed memory goes
//! back to its host each fresh page is also a fault in the host. MinIO writes objects this way
//! for the same reason (minio#7479), and lets slow drives turn it off (minio#17751): here
//! `files.direct_io = false`.
//!
//! - **Durability is unchanged**: a commit still fsyncs the file and the directories (`O_DIRECT`
//!   alone does not make data durable: the drive's cache, the file's size and its blocks).
//! - **Small files keep the page cache**: below [`DIRECT_MIN`] a file is written and read
//!   through it, as before. Writing one directly costs a device round trip per file, and
//!   reading one back (a thumbnail, a document opened again) would miss the cache each time.
//! - **Reads**: a file of [`DIRECT_MIN`] bytes or more is read directly from an offset on a
//!   [`DIRECT_ALIGN`] boundary (whole downloads, the content channel's sends): it was written
//!   around the page cache, and reading it through the cache would pay for those pages then.
//!   A range from elsewhere reads through the cache.
//! - **Alignment**: direct transfers start at, and last for, multiples of [`DIRECT_ALIGN`]
//!   bytes, from memory aligned the same. Bytes go through an [`AlignedBuf`], written a whole
//!   buffer at a time; the tail of a file (less than one unit) is written through the page cache
//!   at commit, after the descriptor leaves direct mode.
//! - **Where the filesystem refuses `O_DIRECT`** (tmpfs, for one), files are written and read
//!   through the page cache: the descriptor is opened without it and switched with `fcntl`
//!   (`F_SETFL`) when a transfer qualifies, and a refusal leaves it as it was.

use std::io;
use std::os::unix::fs::FileExt;

use bytes::Bytes;

/// Alignment of direct transfers: of offsets, lengths and memory. 4 KiB covers every logical
/// block size in use (512 bytes or 4 KiB).
pub const DIRECT_ALIGN: usize = 4096;

/// Files this large or larger are written and read directly (see the module docs).
pub const DIRECT_MIN: u64 = 256 * 1024;

/// Bytes of an [`AlignedBuf`]: one direct write, or one block read.
pub(super) const BUF_BYTES: usize = 1024 * 1024;

/// Puts `file`'s descriptor in direct mode (`on`) or takes it out: `Ok(false)` when the
/// filesystem refuses direct I/O.
pub(super) fn set_direct(file: &std::fs::File, on: bool) -> io::Result<bool> {
    use rustix::fs::OFlags;
    let flags = rustix::fs::fcntl_getfl(file)?;
    let wanted = if on { flags | OFlags::DIRECT } else { flags - OFlags::DIRECT };
    match rustix::fs::fcntl_setfl(file, wanted) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::INVAL) if on => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// [`BUF_BYTES`] bytes aligned to [`DIRECT_ALIGN`], and how many of them are filled. Reused
/// ([`AlignedBuf::take`], [`AlignedBuf::give_back`]): memory fresh from the allocator costs a
/// page fault per 4 KiB.
pub(super) struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
    pub(super) filled: usize,
}

/// Buffers kept for reuse, at most this many (16 MiB).
const POOLED: usize = 16;
static POOL: std::sync::Mutex<Vec<AlignedBuf>> = std::sync::Mutex::new(Vec::new());

impl AlignedBuf {
    /// A buffer from the pool, or a new one; empty.
    pub(super) fn take() -> AlignedBuf {
        if let Some(buf) = POOL.lock().ok().and_then(|mut p| p.pop()) {
            return buf;
        }
        let mem = vec![0u8; BUF_BYTES + DIRECT_ALIGN];
        let start = mem.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        AlignedBuf { mem, start, filled: 0 }
    }

    pub(super) fn give_back(mut self) {
        self.filled = 0;
        if self.mem.is_empty() {
            return;
        }
        if let Ok(mut pool) = POOL.lock() {
            if pool.len() < POOLED {
                pool.push(self);
            }
        }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.mem[self.start..self.start + BUF_BYTES]
    }

    pub(super) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + BUF_BYTES]
    }

    /// The filled bytes as a [`Bytes`], without a copy: the buffer goes back to the pool when
    /// the last reference is dropped.
    pub(super) fn into_bytes(self) -> Bytes {
        Bytes::from_owner(Filled(self))
    }
}

struct Filled(AlignedBuf);

impl AsRef<[u8]> for Filled {
    fn as_ref(&self) -> &[u8] {
        &self.0.bytes()[..self.0.filled]
    }
}

impl Drop for Filled {
    fn drop(&mut self) {
        std::mem::replace(&mut self.0, AlignedBuf { mem: Vec::new(), start: 0, filled: 0 }).give_back();
    }
}

/// Whether a writer's descriptor is in direct mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Not yet: the file has not reached [`DIRECT_MIN`] bytes.
    Untried,
    On,
    /// The filesystem refused it.
    Refused,
}

/// A file written through an [`AlignedBuf`] (see the module docs). It moves to the blocking
/// task that writes each block, and back.
pub(super) struct DirectWriter {
    buf: AlignedBuf,
    mode: Mode,
}

impl DirectWriter {
    pub(super) fn new() -> DirectWriter {
        DirectWriter { buf: AlignedBuf::take(), mode: Mode::Untried }
    }

    /// Copies `chunks` into the buffer, writing it out each time it is full (directly, once
    /// the file has one full buffer: past [`DIRECT_MIN`]). `before`: bytes of the file before
    /// these; the buffer holds the last `before % BUF_BYTES` of them.
    pub(super) fn write(mut self, file: &std::fs::File, chunks: &[Bytes], before: u64) -> io::Result<DirectWriter> {
        let mut at = before - self.buf.filled as u64;
        for chunk in chunks {
            let mut c: &[u8] = chunk;
            while !c.is_empty() {
                let filled = self.buf.filled;
                let n = c.len().min(BUF_BYTES - filled);
                self.buf.bytes_mut()[filled..filled + n].copy_from_slice(&c[..n]);
                self.buf.filled += n;
                c = &c[n..];
                if self.buf.filled == BUF_BYTES {
                    if self.mode == Mode::Untried {
                        self.mode = if set_direct(file, true)? { Mode::On } else { Mode::Refused };
                    }
                    file.write_all_at(self.buf.bytes(), at)?;
                    at += BUF_BYTES as u64;
                    self.buf.filled = 0;
                }
            }
        }
        Ok(self)
    }

    /// Writes what the buffer holds at the end of the file (`written` bytes in all): its whole
    /// units directly when the file qualifies, then the rest through the page cache, the
    /// descriptor out of direct mode. The buffer goes back to the pool.
    pub(super) fn finish(mut self, file: &std::fs::File, written: u64) -> io::Result<()> {
        let filled = self.buf.filled;
        let at = written - filled as u64;
        if self.mode == Mode::Untried && written >= DIRECT_MIN {
            self.mode = if set_direct(file, true)? { Mode::On } else { Mode::Refused };
        }
        let mut from = 0;
        if self.mode == Mode::On {
            from = filled / DIRECT_ALIGN * DIRECT_ALIGN;
            if from > 0 {
                file.write_all_at(&self.buf.bytes()[..from], at)?;
            }
            set_direct(file, false)?;
        }
        if from < filled {
            file.write_all_at(&self.buf.bytes()[from..filled], at + from as u64)?;
        }
        self.buf.give_back();
        Ok(())
    }

    /// Gives the buffer back without writing (an aborted write).
    pub(super) fn discard(self) {
        self.buf.give_back();
    }
}

/// Reads `len` bytes at `at` (a multiple of [`DIRECT_ALIGN`]) of a file in direct mode into
/// `buf`: whole units are asked for, and the file's end cuts the last one short.
pub(super) fn read_direct(file: &std::fs::File, buf: &mut AlignedBuf, len: usize, at: u64) -> io::Result<()> {
    let whole = len.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    let mut got = 0;
    while got < len {
        let n = match file.read_at(&mut buf.bytes_mut()[got..whole], at + got as u64) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        got += n;
        // A count short of a unit is the end of the file: nothing more can be read from there.
        if n == 0 || (got < len && got % DIRECT_ALIGN != 0) {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

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
//! - **Where the filesystem refuses `O_DIRECT`** (ramfs, ecryptfs, CIFS, tmpfs before Linux
//!   6.6), files are written and read through the page cache: the descriptor is opened without
//!   it and switched with `fcntl` (`F_SETFL`) when a transfer qualifies, and a refusal leaves it
//!   as it was. Some filesystems take the switch and then refuse each transfer with `EINVAL`
//!   (overlayfs over one without direct I/O, scylladb/seastar#3518; shiftfs, canonical/raft#48;
//!   alignments over 4 KiB, facebook/rocksdb#14671): the descriptor leaves direct mode and the
//!   same transfer is made again through the page cache ([`direct_or_buffered`]); positional
//!   I/O makes that retry exact. Where pages are larger than [`DIRECT_ALIGN`] (some arm64 and
//!   ppc64le kernels, whose ZFS wants page alignment), direct I/O is not tried.

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
    if on && rustix::param::page_size() > DIRECT_ALIGN {
        return Ok(false);
    }
    let flags = rustix::fs::fcntl_getfl(file)?;
    let wanted = if on { flags | OFlags::DIRECT } else { flags - OFlags::DIRECT };
    match rustix::fs::fcntl_setfl(file, wanted) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::INVAL) if on => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Runs `transfer` (a positional read or write on `file`, in direct mode), and once more
/// through the page cache, the descriptor out of direct mode, if the filesystem refused it with
/// `EINVAL` (see the module docs). Returns its result and whether the descriptor is still in
/// direct mode.
pub(super) fn direct_or_buffered<T>(
    file: &std::fs::File,
    mut transfer: impl FnMut() -> io::Result<T>,
) -> io::Result<(T, bool)> {
    match transfer() {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            set_direct(file, false)?;
            // Once per process: on such a filesystem every large file comes here.
            static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    "the filesystem took O_DIRECT, then refused a transfer: such files go through the page cache \
                     (files.direct_io = false avoids the first try)"
                );
            }
            Ok((transfer()?, false))
        }
        other => Ok((other?, true)),
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

/// A file written through an [`AlignedBuf`] (see the module docs), taken from the pool at the
/// first bytes. It moves to the blocking task that writes each block, and back.
pub(super) struct DirectWriter {
    buf: Option<AlignedBuf>,
    mode: Mode,
}

impl DirectWriter {
    pub(super) fn new() -> DirectWriter {
        DirectWriter { buf: None, mode: Mode::Untried }
    }

    /// Copies `chunks` into the buffer, writing it out each time it is full (directly, once
    /// the file has one full buffer: past [`DIRECT_MIN`]). `before`: bytes of the file before
    /// these; the buffer holds the last `before % BUF_BYTES` of them.
    pub(super) fn write(mut self, file: &std::fs::File, chunks: &[Bytes], before: u64) -> io::Result<DirectWriter> {
        let mut buf = self.buf.take().unwrap_or_else(AlignedBuf::take);
        let mut at = before - buf.filled as u64;
        for chunk in chunks {
            let mut c: &[u8] = chunk;
            while !c.is_empty() {
                let filled = buf.filled;
                let n = c.len().min(BUF_BYTES - filled);
                buf.bytes_mut()[filled..filled + n].copy_from_slice(&c[..n]);
                buf.filled += n;
                c = &c[n..];
                if buf.filled == BUF_BYTES {
                    if self.mode == Mode::Untried {
                        self.mode = if set_direct(file, true)? { Mode::On } else { Mode::Refused };
                    }
                    if self.mode == Mode::On {
                        if !direct_or_buffered(file, || file.write_all_at(buf.bytes(), at))?.1 {
                            self.mode = Mode::Refused;
                        }
                    } else {
                        file.write_all_at(buf.bytes(), at)?;
                    }
                    at += BUF_BYTES as u64;
                    buf.filled = 0;
                }
            }
        }
        self.buf = Some(buf);
        Ok(self)
    }

    /// Writes what the buffer holds at the end of the file (`written` bytes in all): its whole
    /// units directly when the file qualifies, then the rest through the page cache, the
    /// descriptor out of direct mode. The buffer goes back to the pool.
    pub(super) fn finish(mut self, file: &std::fs::File, written: u64) -> io::Result<()> {
        let Some(buf) = self.buf.take() else { return Ok(()) };
        let filled = buf.filled;
        let at = written - filled as u64;
        if self.mode == Mode::Untried && written >= DIRECT_MIN {
            self.mode = if set_direct(file, true)? { Mode::On } else { Mode::Refused };
        }
        let mut from = 0;
        if self.mode == Mode::On {
            from = filled / DIRECT_ALIGN * DIRECT_ALIGN;
            if from > 0 && !direct_or_buffered(file, || file.write_all_at(&buf.bytes()[..from], at))?.1 {
                self.mode = Mode::Refused;
            }
            if self.mode == Mode::On {
                set_direct(file, false)?;
            }
        }
        if from < filled {
            file.write_all_at(&buf.bytes()[from..filled], at + from as u64)?;
        }
        buf.give_back();
        Ok(())
    }

    /// Gives the buffer back without writing (an aborted write).
    pub(super) fn discard(self) {
        if let Some(buf) = self.buf {
            buf.give_back();
        }
    }
}

/// Reads `len` bytes at `at` (a multiple of [`DIRECT_ALIGN`]) of a file in direct mode into
/// `buf`: whole units are asked for, and the file's end cuts the last one short. A refusal
/// (`EINVAL`) takes the descriptor out of direct mode and reads through the page cache (see
/// [`direct_or_buffered`]); the stream's next reads find it so.
pub(super) fn read_direct(file: &std::fs::File, buf: &mut AlignedBuf, len: usize, at: u64) -> io::Result<()> {
    direct_or_buffered(file, || read_units(file, buf, len, at)).map(|_| ())
}

fn read_units(file: &std::fs::File, buf: &mut AlignedBuf, len: usize, at: u64) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `file`'s descriptor is in direct mode.
    fn is_direct(file: &std::fs::File) -> bool {
        rustix::fs::fcntl_getfl(file).unwrap().contains(rustix::fs::OFlags::DIRECT)
    }

    /// A transfer the filesystem refuses in direct mode (here: from memory off the alignment,
    /// which ext4 refuses with `EINVAL`, as overlayfs over ramfs refuses any) is made through
    /// the page cache, exactly, and the descriptor leaves direct mode.
    #[test]
    fn a_refused_direct_transfer_is_made_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        if !set_direct(&file, true).unwrap() {
            eprintln!("skipped: the filesystem of {} refuses O_DIRECT", dir.path().display());
            return;
        }
        let mut buf = AlignedBuf::take();
        for (i, b) in buf.bytes_mut().iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        // Aligned: written directly, still direct.
        let (_, still) = direct_or_buffered(&file, || file.write_all_at(&buf.bytes()[..DIRECT_ALIGN], 0)).unwrap();
        assert!(still && is_direct(&file), "an aligned write stays direct");
        // Memory one byte off the alignment: refused by the kernel, then made buffered.
        let odd = &buf.bytes()[1..1 + DIRECT_ALIGN];
        match file.write_all_at(odd, DIRECT_ALIGN as u64) {
            Ok(()) => {
                // tmpfs (Linux 6.6 and later) takes unaligned direct I/O: nothing to refuse.
                eprintln!("skipped: the filesystem of {} takes unaligned direct I/O", dir.path().display());
                return;
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(rustix::io::Errno::INVAL.raw_os_error())),
        }
        let (_, still) = direct_or_buffered(&file, || file.write_all_at(odd, DIRECT_ALIGN as u64)).unwrap();
        assert!(!still && !is_direct(&file), "the descriptor left direct mode");
        let mut want = buf.bytes()[..DIRECT_ALIGN].to_vec();
        want.extend_from_slice(odd);
        assert!(std::fs::read(&path).unwrap() == want, "both writes landed, in place");
        // Reading: an odd length in direct mode is refused, then read through the cache.
        assert!(set_direct(&file, true).unwrap());
        let mut into = vec![0u8; 100];
        let (_, still) = direct_or_buffered(&file, || file.read_exact_at(&mut into, 10)).unwrap();
        assert!(!still && !is_direct(&file));
        assert_eq!(into, want[10..110]);
        buf.give_back();
    }
}

//! What copying a tree into a new directory reports, shared by both backends'
//! `copy_tree`: live counters the caller can read while the copy runs (for events and
//! metrics), a flag that asks it to stop, and the final tally.
//!
//! The rules both backends follow, so a clone is the same whichever one made it:
//! - nothing is ever followed: a symlink is made again with the same target text, and a
//!   directory is entered only by its handle (or an `O_NOFOLLOW` descriptor);
//! - directories are made `0700` while they are filled and get their own mode, owner and
//!   times after their contents, so a `chmod 555` directory can be filled and keeps its
//!   mtime; the new top directory gets the attributes the caller asks for, last of all:
//!   a top directory carrying them is therefore a finished copy;
//! - regular files: content, then mode, owner, atime and mtime; a file with several
//!   links inside the tree is linked again (up to [`MAX_LINKED_INODES`] of them; beyond
//!   that, copied apart and counted);
//! - FIFOs are made again; sockets and device nodes are skipped and counted: a
//!   provisioner making device nodes for a tenant would hand them a way round the
//!   node's own permissions;
//! - an owner the server refuses to set (`root_squash`) is counted, not fatal.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Files with more than one link remembered per copy, so their other names become
/// links again; past this the memory would grow with the tenant's tree.
pub const MAX_LINKED_INODES: usize = 10_000;

/// Bytes moved per READ/WRITE (or `copy_file_range`) call.
pub const CHUNK: u32 = 64 * 1024;

/// Counters of a copy under way, and its stop flag.
#[derive(Debug, Default)]
pub struct CopyProgress {
    pub entries: AtomicU64,
    pub bytes: AtomicU64,
    cancel: AtomicBool,
}

impl CopyProgress {
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
    pub(crate) fn add_entry(&self) {
        self.entries.fetch_add(1, Ordering::Relaxed);
        crate::metrics::clone_copied(1, 0);
    }
    pub(crate) fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        crate::metrics::clone_copied(0, n);
    }
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The tally of a finished copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub fifos: u64,
    pub bytes: u64,
    /// Names made as hard links to a file already copied.
    pub hard_links: u64,
    /// Names of multiply-linked files copied as separate files (past the memory cap).
    pub links_copied_apart: u64,
    /// Sockets and device nodes, not copied.
    pub specials_skipped: u64,
    /// Entries whose owner the server refused to set; they belong to the provisioner.
    pub owners_refused: u64,
}

impl Copied {
    /// Adds what another part of the same copy did.
    pub fn add(&mut self, o: &Copied) {
        self.files += o.files;
        self.dirs += o.dirs;
        self.symlinks += o.symlinks;
        self.fifos += o.fifos;
        self.bytes += o.bytes;
        self.hard_links += o.hard_links;
        self.links_copied_apart += o.links_copied_apart;
        self.specials_skipped += o.specials_skipped;
        self.owners_refused += o.owners_refused;
    }
}

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} files ({} bytes), {} directories, {} symlinks",
            self.files, self.bytes, self.dirs, self.symlinks
        )?;
        if self.fifos > 0 {
            write!(f, ", {} FIFOs", self.fifos)?;
        }
        if self.hard_links > 0 {
            write!(f, ", {} hard links", self.hard_links)?;
        }
        if self.links_copied_apart > 0 {
            write!(
                f,
                ", {} hard links copied as separate files",
                self.links_copied_apart
            )?;
        }
        if self.specials_skipped > 0 {
            write!(
                f,
                ", {} sockets or device nodes skipped",
                self.specials_skipped
            )?;
        }
        if self.owners_refused > 0 {
            write!(
                f,
                ", {} owners the server refused to set",
                self.owners_refused
            )?;
        }
        Ok(())
    }
}

/// Remembers copied files that have other links, bounded by [`MAX_LINKED_INODES`].
pub(crate) struct Links<T> {
    seen: std::collections::HashMap<(u64, u64), T>,
}

impl<T: Clone> Links<T> {
    pub(crate) fn new() -> Self {
        Self {
            seen: std::collections::HashMap::new(),
        }
    }
    pub(crate) fn get(&self, key: (u64, u64)) -> Option<T> {
        self.seen.get(&key).cloned()
    }
    /// False when full: the caller counts the name as copied apart.
    pub(crate) fn remember(&mut self, key: (u64, u64), target: T) -> bool {
        if self.seen.len() >= MAX_LINKED_INODES {
            return false;
        }
        self.seen.insert(key, target);
        true
    }
}

//! Writing files. Every write is atomic: see [`AtomicFile`].

mod atomic;

pub use atomic::AtomicFile;

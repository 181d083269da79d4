pub mod content;
pub mod replicate;
pub mod rev;
pub mod schedule;
pub mod tree;

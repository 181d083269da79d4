pub mod replicate;
pub mod rev;
pub mod tree;

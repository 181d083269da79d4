pub mod rev;
pub mod tree;
pub mod replicate;

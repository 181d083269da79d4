pub mod rev;
pub mod tree;

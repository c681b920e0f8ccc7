mod audit;
mod mesh;
mod ops;
mod store;
mod usage;

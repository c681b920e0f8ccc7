mod audit;
mod mesh;
mod ops;

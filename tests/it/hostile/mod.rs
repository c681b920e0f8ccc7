mod audit;
mod ops;

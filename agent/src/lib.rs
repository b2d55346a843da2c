//! The agent's modules, a library so the binary (`main.rs`) and the fuzz targets share them.
// Layers, each importing only those below it: api -> runtime -> guest -> error, validate.
pub mod api;
pub mod error;
pub mod guest;
pub mod runtime;
pub mod validate;

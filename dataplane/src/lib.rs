pub mod gateway;
pub mod instance;

//! Authentication: who is calling, proven by a credential the gateway can verify.

pub mod claims;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod pem;

#[cfg(test)]
mod testkit;

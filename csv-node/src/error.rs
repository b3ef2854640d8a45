//! What every subsystem error can say about itself: its stable wire code. Each subsystem
//! has its own error enum (`MetaError`, `LeaseError`, `DataError`, `OpsError`); the admin
//! edge turns them into the wire `ApiError` with [`to_api`], and the retry policy decides
//! on their codes.

use csv_api::ErrorCode;
use csv_api::error::ApiError;

/// An error with a stable code.
pub trait Coded: std::fmt::Display {
    /// The code the wire carries for it.
    fn code(&self) -> ErrorCode;

    /// The message the wire carries for it.
    fn message(&self) -> String {
        self.to_string()
    }
}

impl Coded for ApiError {
    fn code(&self) -> ErrorCode {
        ApiError::code(self)
    }

    fn message(&self) -> String {
        self.message.clone()
    }
}

/// The wire error of `e`.
pub fn to_api(e: &(impl Coded + ?Sized)) -> ApiError {
    ApiError::new(e.code(), e.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_error_crosses_unchanged() {
        let e = ApiError::new(ErrorCode::NotFound, "vhd 3");
        assert_eq!(to_api(&e), e);
    }
}

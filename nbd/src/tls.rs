//! TLS for STARTTLS (server and client): the rustls configurations built from PEM files
//! live in the `csv-tls` crate, shared with the node-to-node transports.

pub use csv_tls::pem::{TlsError, client_config, load_certs, load_key, server_config};

pub mod sockjs;

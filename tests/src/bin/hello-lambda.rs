//! The smallest `lambda_http` function, built with the same profile as ours: the yardstick
//! the cold-start benchmark compares each function's Init against.

use lambda_http::{Body, Error, Request, Response, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    run(service_fn(|_req: Request| async { Ok::<_, Error>(Response::new(Body::from("hello"))) }))
        .await
}

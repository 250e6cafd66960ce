//! The demo shop and the mirror answer through the gateway.

use serde_json::json;

use crate::support::Gateway;

#[tokio::test]
async fn shop_product_and_not_found_with_details() {
    let gw = Gateway::shop().await;
    let (status, body) = gw.get("/v1/products/p1").await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], "The Rust Book");
    assert_eq!(body["priceCents"], "3999");

    let (status, body) = gw.get("/v1/products/nope").await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], 5);
    assert_eq!(
        body["details"][0]["@type"],
        "type.googleapis.com/google.rpc.ResourceInfo"
    );
    assert_eq!(body["details"][1]["reason"], "PRODUCT_NOT_FOUND");
}

#[tokio::test]
async fn mirror_echoes_bound_path_variable() {
    let gw = Gateway::mirror("").await;
    let (status, body) = gw.get("/v1/messages/123?revision=2&sub.subfield=foo").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messageId"], "123");
    assert_eq!(body["revision"], "2");
    assert_eq!(body["sub"], json!({"subfield": "foo", "count": 0}));
}

//! The demo shop: catalog, orders and users, in memory, as real tonic services.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use prost::Message;
use tokio::sync::RwLock;
use tonic::{Code, Request, Response, Status};

use crate::proto::google::rpc;
use crate::proto::shop::v1::{
    catalog_service_server::CatalogService, order_service_server::OrderService,
    user_service_server::UserService, CancelOrderRequest, Category, CreateOrderRequest,
    CreateProductRequest, CreateUserRequest, DeleteProductRequest, GetOrderRequest,
    GetProductRequest, GetUserRequest, ListOrdersRequest, ListOrdersResponse, ListProductsRequest,
    ListProductsResponse, Order, OrderStatus, PriceUpdate, Product, Quote, QuoteRequest,
    UpdateProductRequest, User, WatchPriceRequest,
};

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

/// NOT_FOUND carrying ResourceInfo and ErrorInfo details, as a real service would send it.
fn not_found(kind: &str, id: &str) -> Status {
    let resource = rpc::ResourceInfo {
        resource_type: kind.to_owned(),
        resource_name: id.to_owned(),
        owner: String::new(),
        description: format!("no {kind} has id {id:?}"),
    };
    let info = rpc::ErrorInfo {
        reason: format!("{}_NOT_FOUND", kind.to_uppercase()),
        domain: "shop.example".to_owned(),
        metadata: [("id".to_owned(), id.to_owned())].into(),
    };
    let status = rpc::Status {
        code: Code::NotFound as i32,
        message: format!("{kind} {id:?} not found"),
        details: vec![
            prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.ResourceInfo".to_owned(),
                value: resource.encode_to_vec(),
            },
            prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.ErrorInfo".to_owned(),
                value: info.encode_to_vec(),
            },
        ],
    };
    Status::with_details(
        Code::NotFound,
        status.message.clone(),
        status.encode_to_vec().into(),
    )
}

/// The catalog, seeded with a few products.
#[derive(Debug)]
pub struct Catalog {
    products: Arc<RwLock<BTreeMap<String, Product>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Default for Catalog {
    fn default() -> Self {
        let seed = [
            (
                "p1",
                "The Rust Book",
                Category::Books,
                3999,
                vec!["rust", "programming"],
            ),
            (
                "p2",
                "Mechanical keyboard",
                Category::Electronics,
                12900,
                vec!["keyboard"],
            ),
            (
                "p3",
                "Coffee beans, 1 kg",
                Category::Grocery,
                2450,
                vec!["coffee"],
            ),
        ];
        let products = seed
            .into_iter()
            .map(|(id, name, category, price, tags)| {
                let product = Product {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    description: String::new(),
                    price_cents: price,
                    currency: "EUR".to_owned(),
                    category: category as i32,
                    tags: tags.into_iter().map(str::to_owned).collect(),
                    stock: 10,
                    created_at: Some(now()),
                };
                (id.to_owned(), product)
            })
            .collect();
        Catalog {
            products: Arc::new(RwLock::new(products)),
            next_id: std::sync::atomic::AtomicU64::new(4),
        }
    }
}

impl Catalog {
    /// A shared handle on the products, for the order service's prices.
    pub fn products(&self) -> Arc<RwLock<BTreeMap<String, Product>>> {
        self.products.clone()
    }
}

type PriceStream = Pin<Box<dyn Stream<Item = Result<PriceUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl CatalogService for Catalog {
    async fn get_product(
        &self,
        request: Request<GetProductRequest>,
    ) -> Result<Response<Product>, Status> {
        let id = request.into_inner().id;
        let products = self.products.read().await;
        products
            .get(&id)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| not_found("product", &id))
    }

    async fn list_products(
        &self,
        request: Request<ListProductsRequest>,
    ) -> Result<Response<ListProductsResponse>, Status> {
        let req = request.into_inner();
        if req.page_size < 0 {
            return Err(Status::invalid_argument("page_size must not be negative"));
        }
        let size = if req.page_size == 0 {
            50
        } else {
            req.page_size as usize
        };
        let products = self.products.read().await;
        let matching: Vec<Product> = products
            .values()
            .filter(|p| req.category == 0 || p.category == req.category)
            .filter(|p| req.page_token.is_empty() || p.id > req.page_token)
            .cloned()
            .collect();
        let next_page_token = if matching.len() > size {
            matching[size - 1].id.clone()
        } else {
            String::new()
        };
        Ok(Response::new(ListProductsResponse {
            products: matching.into_iter().take(size).collect(),
            next_page_token,
        }))
    }

    async fn create_product(
        &self,
        request: Request<CreateProductRequest>,
    ) -> Result<Response<Product>, Status> {
        let mut product = request
            .into_inner()
            .product
            .ok_or_else(|| Status::invalid_argument("product is required"))?;
        if product.name.is_empty() {
            return Err(Status::invalid_argument("product.name is required"));
        }
        let n = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        product.id = format!("p{n}");
        product.created_at = Some(now());
        self.products
            .write()
            .await
            .insert(product.id.clone(), product.clone());
        Ok(Response::new(product))
    }

    async fn update_product(
        &self,
        request: Request<UpdateProductRequest>,
    ) -> Result<Response<Product>, Status> {
        let req = request.into_inner();
        let patch = req
            .product
            .ok_or_else(|| Status::invalid_argument("product is required"))?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut products = self.products.write().await;
        let current = products
            .get_mut(&patch.id)
            .ok_or_else(|| not_found("product", &patch.id))?;
        for path in &paths {
            match path.as_str() {
                "name" => current.name = patch.name.clone(),
                "description" => current.description = patch.description.clone(),
                "price_cents" => current.price_cents = patch.price_cents,
                "currency" => current.currency = patch.currency.clone(),
                "category" => current.category = patch.category,
                "tags" => current.tags = patch.tags.clone(),
                "stock" => current.stock = patch.stock,
                "id" => {}
                other => {
                    return Err(Status::invalid_argument(format!(
                        "update_mask names unknown or read-only field {other:?}"
                    )))
                }
            }
        }
        Ok(Response::new(current.clone()))
    }

    async fn delete_product(
        &self,
        request: Request<DeleteProductRequest>,
    ) -> Result<Response<()>, Status> {
        let id = request.into_inner().id;
        match self.products.write().await.remove(&id) {
            Some(_) => Ok(Response::new(())),
            None => Err(not_found("product", &id)),
        }
    }

    type QuotePricesStream = Pin<Box<dyn Stream<Item = Result<Quote, Status>> + Send>>;

    async fn quote_prices(
        &self,
        request: Request<tonic::Streaming<QuoteRequest>>,
    ) -> Result<Response<Self::QuotePricesStream>, Status> {
        let products = self.products.clone();
        let lines = request.into_inner();
        // Each line is priced as it arrives; an unknown product ends the stream with NOT_FOUND.
        let quotes =
            futures_util::stream::unfold((lines, 0i64, false), move |(mut lines, basket, done)| {
                let products = products.clone();
                async move {
                    if done {
                        return None;
                    }
                    let line = match lines.message().await {
                        Ok(Some(line)) => line,
                        Ok(None) => return None,
                        Err(status) => return Some((Err(status), (lines, basket, true))),
                    };
                    let product = products.read().await.get(&line.product_id).cloned();
                    let Some(product) = product else {
                        let err = not_found("product", &line.product_id);
                        return Some((Err(err), (lines, basket, true)));
                    };
                    let line_cents = product.price_cents * i64::from(line.quantity.max(0));
                    let basket = basket + line_cents;
                    let quote = Quote {
                        product_id: line.product_id,
                        quantity: line.quantity,
                        line_cents,
                        basket_cents: basket,
                        currency: product.currency,
                    };
                    Some((Ok(quote), (lines, basket, false)))
                }
            });
        Ok(Response::new(Box::pin(quotes)))
    }

    type WatchPriceStream = PriceStream;

    async fn watch_price(
        &self,
        request: Request<WatchPriceRequest>,
    ) -> Result<Response<PriceStream>, Status> {
        let req = request.into_inner();
        let start = self
            .products
            .read()
            .await
            .get(&req.id)
            .map(|p| p.price_cents)
            .ok_or_else(|| not_found("product", &req.id))?;
        let updates = if req.updates <= 0 {
            5
        } else {
            req.updates.min(1000)
        };
        let id = req.id;
        // A made-up walk of prices, one every 200 ms, so a client sees a live stream.
        let stream = futures_util::stream::unfold(0, move |i| {
            let id = id.clone();
            async move {
                if i >= updates {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let delta = [0, 50, -30, 120, -80][(i % 5) as usize];
                let update = PriceUpdate {
                    product_id: id,
                    price_cents: start + delta,
                    at: Some(now()),
                };
                Some((Ok(update), i + 1))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Orders, priced from the catalog.
#[derive(Debug)]
pub struct Orders {
    products: Arc<RwLock<BTreeMap<String, Product>>>,
    orders: RwLock<BTreeMap<String, Order>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Orders {
    /// An empty order book over the catalog's products.
    pub fn new(products: Arc<RwLock<BTreeMap<String, Product>>>) -> Self {
        Orders {
            products,
            orders: RwLock::new(BTreeMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
        }
    }
}

#[tonic::async_trait]
impl OrderService for Orders {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let req = request.into_inner();
        if req.items.is_empty() {
            return Err(Status::invalid_argument("an order needs at least one item"));
        }
        let products = self.products.read().await;
        let mut items = Vec::with_capacity(req.items.len());
        let mut total = 0i64;
        for mut item in req.items {
            if item.quantity <= 0 {
                return Err(Status::invalid_argument(format!(
                    "quantity of {} must be positive",
                    item.product_id
                )));
            }
            let product = products
                .get(&item.product_id)
                .ok_or_else(|| not_found("product", &item.product_id))?;
            item.unit_price_cents = product.price_cents;
            total += product.price_cents * i64::from(item.quantity);
            items.push(item);
        }
        let n = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let order = Order {
            id: format!("o{n}"),
            user_id: req.user_id,
            items,
            status: OrderStatus::Placed as i32,
            total_cents: total,
            created_at: Some(now()),
            labels: req.labels,
        };
        self.orders
            .write()
            .await
            .insert(order.id.clone(), order.clone());
        Ok(Response::new(order))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let req = request.into_inner();
        let orders = self.orders.read().await;
        orders
            .get(&req.id)
            .filter(|o| req.user_id.is_empty() || o.user_id == req.user_id)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| not_found("order", &req.id))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let req = request.into_inner();
        let orders = self.orders.read().await;
        let orders = orders
            .values()
            .filter(|o| o.user_id == req.user_id)
            .filter(|o| req.status == 0 || o.status == req.status)
            .cloned()
            .collect();
        Ok(Response::new(ListOrdersResponse { orders }))
    }

    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let req = request.into_inner();
        let mut orders = self.orders.write().await;
        let order = orders
            .get_mut(&req.id)
            .ok_or_else(|| not_found("order", &req.id))?;
        if order.status != OrderStatus::Placed as i32 {
            return Err(Status::failed_precondition(
                "only a placed order can be cancelled",
            ));
        }
        order.status = OrderStatus::Cancelled as i32;
        Ok(Response::new(order.clone()))
    }
}

/// Users, seeded with one.
#[derive(Debug)]
pub struct Users {
    users: RwLock<BTreeMap<String, User>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Default for Users {
    fn default() -> Self {
        let ada = User {
            id: "u1".to_owned(),
            email: "ada@example.com".to_owned(),
            display_name: "Ada".to_owned(),
            created_at: Some(now()),
        };
        Users {
            users: RwLock::new([(ada.id.clone(), ada)].into()),
            next_id: std::sync::atomic::AtomicU64::new(2),
        }
    }
}

#[tonic::async_trait]
impl UserService for Users {
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let id = request.into_inner().id;
        let users = self.users.read().await;
        users
            .get(&id)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| not_found("user", &id))
    }

    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let mut user = request
            .into_inner()
            .user
            .ok_or_else(|| Status::invalid_argument("user is required"))?;
        if !user.email.contains('@') {
            return Err(Status::invalid_argument(
                "user.email must be an email address",
            ));
        }
        let mut users = self.users.write().await;
        if users.values().any(|u| u.email == user.email) {
            return Err(Status::already_exists(format!(
                "a user with email {:?} exists",
                user.email
            )));
        }
        let n = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        user.id = format!("u{n}");
        user.created_at = Some(now());
        users.insert(user.id.clone(), user.clone());
        Ok(Response::new(user))
    }
}

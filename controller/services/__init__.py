"""Business rules of the controller, one module per resource; routers stay thin and call these."""

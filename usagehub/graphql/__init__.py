"""The GraphQL API: a thin strawberry layer over core and storage."""

"""Rating as an application service: plans, VAT, invoices, exports, settlement."""

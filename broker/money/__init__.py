"""What a job costs: prices, the usage ledger, budgets and the durable usage sink."""

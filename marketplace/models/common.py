"""What the model modules share: the money column (6 decimals in tUSD)."""


MONEY = {"max_digits": 20, "decimal_places": 6}

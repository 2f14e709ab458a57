"""What a store holds, read and written: captures, views, record logs, SQL."""

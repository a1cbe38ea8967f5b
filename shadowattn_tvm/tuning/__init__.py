"""MetaSchedule tuning: tasks of a compiled model (`tasks`), the records and how compile uses them
(`database`), and the tune driver over RPC (`driver`)."""
